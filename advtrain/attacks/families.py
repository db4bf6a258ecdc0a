"""The families of evaluation attacks as data: runner, metric, default bound, which overrides apply.

One row per family replaces a chain of regular expressions and branches: the name grammar
(:mod:`advtrain.attacks.eval_names`) splits a name, the row says what its parts mean, and
:func:`advtrain.attacks.presets.resolve_eval_attack` applies the same resolution rules to every
row. Adding a family is adding a row (a runner and a describer), not a branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from advtrain.attacks.autoattack import SQUARE_QUERIES, STANDARD_ITERATIONS, autoattack
from advtrain.attacks.fgsm import FGSMParams, fgsm
from advtrain.attacks.perceptual.distance import LPIPS_NETWORKS
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.attacks.threat import SYMBOL
from advtrain.params import format_number

if TYPE_CHECKING:
    from advtrain.attacks.eval_attack import EvalAttack

Runner = Callable[["EvalAttack", nn.Module, Tensor, Tensor], Tensor]
Describer = Callable[["EvalAttack"], str]

#: The ℓp presets' default balls (ℓ∞ 8/255 as on CIFAR-10, ℓ2 0.5).
LP_BOUND = {"linf": 8 / 255, "l2": 0.5}
STEP_RULE = "α = max(ε/4, 2.5·ε/steps)"
#: Square's query budget per APGD iteration in the non-standard ``aa<N>`` budgets (standard: 5000 for 100).
AA_QUERIES_PER_ITERATION = SQUARE_QUERIES // STANDARD_ITERATIONS
#: The overrides an ``advtrain eval`` flag or a recipe's ``eval.*`` key can give.
OVERRIDES = ("eps", "alpha", "steps", "restarts", "norm")


@dataclass(frozen=True)
class Family:
    """One family of evaluation attacks.

    ``metric`` None means an ℓp ball whose norm comes from the name's ``-l2``, the ``norm``
    override or the default ball (ℓ∞ otherwise); a fixed metric (``linf`` for FGSM, ``lpips``,
    ``flow``, ``color``) is the family's own, with ``bound`` its default (ℓp: :data:`LP_BOUND`).
    ``steps`` says whether the name carries steps (``required``, ``optional``, ``none``) and
    ``default_steps`` what runs without them; ``variants`` are what may follow ``-`` (an ℓp norm
    or an LPIPS network, by ``variant_role``); ``overrides`` the global overrides that apply (the
    others are ignored, so one ``--eps`` goes with a list of mixed attacks); ``restarts`` the
    restarts when the family has no restarts override (None: the notion does not apply).
    ``lpips_default``: the checkpoint's LPIPS ball is its default. ``needs``: an optional package.
    """

    name: str
    runner: Runner
    describe: Describer
    summary: str
    metric: str | None
    steps: str
    default_steps: int | None = None
    bound: float | None = None
    restarts_in_name: bool = False
    variants: tuple[str, ...] = ()
    variant_role: str | None = None
    default_variant: str | None = None
    overrides: frozenset[str] = frozenset()
    restarts: int | None = 1
    lpips_default: bool = False
    needs: str | None = None
    note: str = ""

    @property
    def lp(self) -> bool:
        """Whether the family's ball is an ℓp ball (ε, α and the ℓp default ball apply)."""
        return self.metric is None or self.metric in LP_BOUND

    def grammar(self) -> str:
        """How names of this family are written, e.g. ``pgd<steps>[x<restarts>][-l2]``."""
        steps = {"required": "<steps>", "optional": "[<iterations>]", "none": ""}[self.steps]
        restarts = "[x<restarts>]" if self.restarts_in_name else ""
        variant = ""
        if self.variants:
            variant = "[-l2]" if self.variant_role == "norm" else "[-<net>]"
        return f"{self.name}{steps}{restarts}{variant}"


def _ball(attack: EvalAttack) -> str:
    return f"{SYMBOL.get(attack.norm or '', '')} ε={attack.threat().written()}"


# --- runners ------------------------------------------------------------------------------------------

def _run_fgsm(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return fgsm(model, x, y, FGSMParams(eps=attack.eps, alpha=attack.eps, random_start=False))


def _run_pgd(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    params = PGDParams(norm=attack.norm or "linf", eps=attack.eps, alpha=attack.alpha or 0.0,
                       steps=attack.steps or 0, random_start=True, restarts=attack.restarts or 1,
                       loss="ce" if attack.family == "pgd" else "margin")
    return pgd(model, x, y, params, keep_best=True, l2_radius="uniform")


def _run_aa(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return autoattack(model, x, y, norm=attack.norm or "linf", eps=attack.eps,
                      iterations=attack.steps or STANDARD_ITERATIONS, queries=attack.queries or SQUARE_QUERIES)


def _run_ppgd(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from advtrain.attacks.perceptual.ppgd import PPGDParams, ppgd  # late: perceptual imports the attack modules

    params = PPGDParams(bound=attack.eps, steps=attack.steps or 1, step=attack.alpha, lpips=attack.network or "self")
    return ppgd(model, x, y, params, cache=attack.cache)


def _run_lpa(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from advtrain.attacks.perceptual.lpa import LPAParams, lpa

    params = LPAParams(bound=attack.eps, steps=attack.steps or 1, step=attack.alpha, lpips=attack.network or "self")
    return lpa(model, x, y, params, cache=attack.cache)


def _run_stadv(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from advtrain.attacks.stadv import StAdvParams, stadv

    return stadv(model, x, y, StAdvParams(bound=attack.eps, steps=attack.steps or 1))


def _run_recolor(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from advtrain.attacks.recolor import ReColorAdvParams, recolor

    return recolor(model, x, y, ReColorAdvParams(bound=attack.eps, steps=attack.steps or 1))


# --- one line saying exactly what runs ------------------------------------------------------------------

def _describe_fgsm(attack: EvalAttack) -> str:
    return f"FGSM {_ball(attack)} (one signed step of ε, no random start)"


def _describe_pgd(attack: EvalAttack) -> str:
    label = "PGD" if attack.family == "pgd" else "CW"
    several = bool(attack.restarts and attack.restarts > 1)
    runs = f"{attack.steps}×{attack.restarts}" if several else f"{attack.steps}"
    loss = "CE loss" if attack.family == "pgd" else "CW margin loss"
    rule = f" ({STEP_RULE})" if attack.alpha_from_rule else ""
    return (f"{label}-{runs} {_ball(attack)} α={format_number(attack.alpha or 0.0)}{rule}, {loss}, random start, "
            f"worst case over steps{' and restarts' if several else ''}")


def _describe_aa(attack: EvalAttack) -> str:
    if attack.standard:
        return f"AutoAttack standard {_ball(attack)} (APGD-CE, APGD-T, FAB-T, Square)"
    return (f"AutoAttack NON-STANDARD budget {_ball(attack)}: APGD-CE, APGD-T, FAB-T with {attack.steps} iterations, "
            f"Square {attack.queries} queries (standard: {STANDARD_ITERATIONS}, {SQUARE_QUERIES}); a quick check, "
            f"not comparable with published AutoAttack numbers")


def _describe_perceptual(attack: EvalAttack) -> str:
    label = "Perceptual PGD" if attack.family == "ppgd" else "Lagrangian perceptual attack"
    per = " per λ round, 5 rounds" if attack.family == "lpa" else ", conjugate-gradient steps"
    return (f"{label}, LPIPS-{attack.network} bound {attack.eps:g}, {attack.steps} steps{per}, margin loss κ=1, "
            "projected onto the bound, worst in-bound iterate")


def _describe_stadv(attack: EvalAttack) -> str:
    return (f"StAdv spatial flow, ‖flow‖∞ ≤ {attack.eps:g} (grid units), {attack.steps} Adam steps, "
            "margin loss + flow smoothness, worst iterate")


def _describe_recolor(attack: EvalAttack) -> str:
    return (f"ReColorAdv colour map, CIELUV displacement ≤ {attack.eps:g}, {attack.steps} Adam steps, "
            "margin loss + smoothness, worst iterate")


_LP_OVERRIDES = frozenset(OVERRIDES)
_PERCEPTUAL = {"metric": "lpips", "bound": 0.5, "steps": "required", "variants": LPIPS_NETWORKS,
               "variant_role": "network", "default_variant": "self", "overrides": frozenset({"steps"}),
               "lpips_default": True}

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("fgsm", _run_fgsm, _describe_fgsm, "one signed step of ε, ℓ∞ only", metric="linf", steps="none",
           default_steps=1, overrides=frozenset({"eps", "norm"}),
           note="FGSM is ℓ∞ only; for a one-step ℓ2 attack use pgd1-l2"),
    Family("pgd", _run_pgd, _describe_pgd, "PGD on cross-entropy, worst case over steps and restarts",
           metric=None, steps="required", restarts_in_name=True, variants=("l2",), variant_role="norm",
           overrides=_LP_OVERRIDES),
    Family("cw", _run_pgd, _describe_pgd, "PGD on the CW margin loss", metric=None, steps="required",
           overrides=_LP_OVERRIDES),
    Family("aa", _run_aa, _describe_aa, "AutoAttack (APGD-CE, APGD-T, FAB-T, Square); with a number: a "
           "NON-STANDARD budget", metric=None, steps="optional", default_steps=STANDARD_ITERATIONS,
           variants=("l2",), variant_role="norm", overrides=frozenset({"eps", "norm", "steps"}), restarts=None,
           needs="torchattacks"),
    Family("ppgd", _run_ppgd, _describe_perceptual, "perceptual PGD in an LPIPS ball", **_PERCEPTUAL),
    Family("lpa", _run_lpa, _describe_perceptual, "Lagrangian perceptual attack in an LPIPS ball", **_PERCEPTUAL),
    Family("stadv", _run_stadv, _describe_stadv, "spatial flow (StAdv)", metric="flow", bound=0.05,
           steps="required", overrides=frozenset({"steps"})),
    Family("recolor", _run_recolor, _describe_recolor, "colour map (ReColorAdv)", metric="color", bound=0.06,
           steps="required", overrides=frozenset({"steps"})),
)}

__all__ = ["AA_QUERIES_PER_ITERATION", "FAMILIES", "LP_BOUND", "OVERRIDES", "STEP_RULE", "Family"]
