"""Evaluation attacks behind one name grammar.

ℓp attacks: ``clean``, ``fgsm``, ``pgd<steps>[x<restarts>][-l2]``, ``cw<steps>``, ``aa``, ``aa-l2``
(``aa<N>[-l2]``: AutoAttack with a smaller, non-standard budget of N iterations).
PAT's perceptual and unseen threat models: ``ppgd<steps>[-<net>]``, ``lpa<steps>[-<net>]`` (LPIPS
ball, net = self | alexnet | vgg | squeeze, default self), ``stadv<steps>`` (spatial flow) and
``recolor<steps>`` (ReColorAdv colour map). Any name may end in ``@<bound>`` (``aa-l2@1``,
``ppgd40@0.25``); a group name expands to several attacks: ``unseen`` is PAT's CIFAR-10 set
(AutoAttack ℓ∞ 8/255, AutoAttack ℓ2 1, StAdv 0.05, ReColorAdv 0.06).

A name parses into a family, a norm, steps, restarts and an optional bound. The ball comes from,
in order: the ``@<bound>``, the ``eps`` override, the ``default`` ball the caller passes (``advtrain
eval``: the checkpoint's own threat model, see :func:`checkpoint_balls`), the field's preset (ℓ∞
8/255, ℓ2 0.5, LPIPS 0.5, flow 0.05, colour 0.06). A name without ``-l2`` and without ``@`` takes
the default ball's norm. The PGD/CW step, unless given, follows ε by one rule for both norms,
:data:`STEP_RULE`. Variants are data over a few runners, not one class per preset.

PGD and CW presets run :func:`~advtrain.attacks.pgd.pgd` with ``keep_best=True``: per example the
worst point over all steps and restarts (a misclassified point wins, then the higher loss), so a
point fooled at some step is never counted as robust.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from advtrain.attacks.autoattack import (
    SQUARE_QUERIES,
    STAGES,
    STANDARD_ITERATIONS,
    autoattack,
    autoattack_stage,
)
from advtrain.attacks.fgsm import FGSMParams, fgsm
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.errors import UserError, did_you_mean
from advtrain.params import FractionError, format_number, parse_number

GRAMMAR = ("clean, fgsm, pgd<steps>[x<restarts>][-l2], cw<steps>, aa, aa-l2, aa<iterations>[-l2], ppgd<steps>[-<net>], "
           "lpa<steps>[-<net>], stadv<steps>, recolor<steps>, each optionally @<bound>; groups: unseen")
FAMILIES = ("clean", "fgsm", "pgd", "cw", "aa", "ppgd", "lpa", "stadv", "recolor")
#: ℓp families: the global eps/alpha/norm overrides apply to these only (other bounds are in other units).
LP_FAMILIES = ("fgsm", "pgd", "cw", "aa")
#: The threat metric and default bound of the families that are not ℓp balls (PAT's evaluation).
OTHER_METRICS = {"ppgd": ("lpips", 0.5), "lpa": ("lpips", 0.5), "stadv": ("flow", 0.05), "recolor": ("color", 0.06)}
#: Named sets of attacks. ``unseen``: the PAT paper's unseen threat models on CIFAR-10.
GROUPS = {"unseen": ("aa@8/255", "aa-l2@1", "stadv100@0.05", "recolor100@0.06")}
LINF_EPS = 8 / 255
LINF_ALPHA = 2 / 255
L2_EPS = 0.5
STEP_RULE = "α = max(ε/4, 2.5·ε/steps)"
#: Square's query budget per APGD iteration in the non-standard ``aa<N>`` budgets (standard: 5000 for 100).
AA_QUERIES_PER_ITERATION = 50


def step_for(eps: float, steps: int) -> float:
    """The PGD/CW step when none is given: α = max(ε/4, 2.5·ε/steps), for ℓ∞ and ℓ2 alike.

    At the CIFAR-10 ℓ∞ budget (8/255, 10 to 50 steps) this is the usual 2/255. It scales with ε, so
    ``--eps 0.2`` gets 0.05 rather than a fixed 2/255 (which weakened PGD-50 by about 3 points on
    digits). For ℓ2 with many steps it is ε/4: Madry's 2.5·ε/steps alone (0.05·ε for 50 steps),
    with a start near the ball's edge, reported 1.5 to 6 points more robustness than torchattacks'
    PGDL2 on a small digits model. With ε/4 and a start radius uniform on [0, ε] the evaluation PGD
    agrees with PGDL2 within 0.5 points (``tests/unit/test_attack_strength.py``).
    """
    return max(eps / 4, 2.5 * eps / steps)


@dataclass(frozen=True)
class Ball:
    """A default threat model: ``norm`` (linf, l2, lpips; None = any ℓp norm), radius and where it came from."""

    norm: str | None
    eps: float
    source: str
    text: str | None = None

    def describe(self) -> str:
        symbol = {"linf": "ℓ∞ ", "l2": "ℓ2 ", "lpips": "LPIPS "}.get(self.norm or "", "")
        return f"{symbol}ε={self.text or format_number(self.eps)}"


def checkpoint_balls(objective: str | None, attack: str | None, params: Any,
                     eval_eps: float | None) -> tuple[Ball | None, Ball | None, Ball | None]:
    """(ℓp default, LPIPS default, training ball) of a checkpoint, from its stored recipe.

    The ℓp default is the recipe's ``eval.eps`` when set (in the training attack's norm when that is
    an ℓp attack), else the training attack's ε and norm (any attack with ``norm`` and ``eps``: pgd,
    fgsm, trades_kl). A perceptual training attack (a ``bound`` in LPIPS units) gives the default
    bound of ``ppgd``/``lpa``. A ``clean`` objective trains against no ball. Takes plain values, not
    a recipe: this module sits below the config layer.
    """
    if objective == "clean" or attack is None or params is None:
        trained = None
    elif getattr(params, "norm", None) in _NORM_SYMBOL and getattr(params, "eps", None) is not None:
        trained = Ball(params.norm, float(params.eps), f"checkpoint: training attack ({attack})")
    elif getattr(params, "bound", None) is not None and getattr(params, "lpips", None) is not None:
        trained = Ball("lpips", float(params.bound), f"checkpoint: training attack ({attack})")
    else:
        trained = None
    lp_trained = trained if trained is not None and trained.norm in _NORM_SYMBOL else None
    if eval_eps is not None:
        lp = Ball(lp_trained.norm if lp_trained else None, float(eval_eps), "checkpoint: recipe eval.eps")
    else:
        lp = lp_trained
    lpips = trained if trained is not None and trained.norm == "lpips" else None
    return lp, lpips, trained

# Shown by `advtrain list attacks` and used for did-you-mean hints.
LISTED = ("clean", "fgsm", "pgd20", "pgd50", "pgd100", "pgd50x10", "pgd20-l2", "pgd50-l2", "pgd50x10-l2",
          "cw50", "cw100", "aa", "aa-l2", "aa10", "ppgd40", "lpa40", "ppgd40-alexnet", "lpa40-alexnet", "stadv100",
          "recolor100", *GROUPS)

_PGD_NAME = re.compile(r"pgd(\d+)(?:x(\d+))?(-l2)?")
_CW_NAME = re.compile(r"cw(\d+)")
_AA_NAME = re.compile(r"aa(\d+)?(-l2)?")
_PERCEPTUAL_NAME = re.compile(r"(ppgd|lpa)(\d+)(?:-(self|alexnet|vgg|squeeze))?")
_UNSEEN_NAME = re.compile(r"(stadv|recolor)(\d+)")


@dataclass(frozen=True)
class EvalAttack:
    """A fully resolved evaluation attack; fields that do not apply to a family are ``None``.

    ``clean``: no attack (``eps`` 0). ``fgsm``: one step of ε, no random start. ``pgd``/``cw``:
    PGD on cross-entropy / CW margin. ``aa``: AutoAttack, standard when ``steps`` is None, else a
    smaller non-standard budget of ``steps`` iterations (no α or restarts). ``ppgd``/``lpa``:
    perceptual attacks, ``eps`` is the LPIPS bound, ``network`` the LPIPS feature network,
    ``alpha`` an explicit LPIPS step length. ``stadv``/``recolor``: ``eps`` is the bound on the
    flow / colour-map displacement. ``group`` names the group the attack came from (reports give
    the union accuracy per group); ``cache`` keeps an LPIPS backbone loaded across batches.
    ``eps_source`` says where the radius came from (``@ suffix``, ``--eps``, the checkpoint, a
    preset default); ``alpha_from_rule`` whether the step is :data:`STEP_RULE`'s.
    """

    name: str
    family: str
    norm: str | None
    eps: float
    alpha: float | None
    steps: int | None
    restarts: int | None
    network: str | None = None
    eps_text: str | None = field(default=None, compare=False)
    group: str | None = field(default=None, compare=False)
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    eps_source: str | None = field(default=None, compare=False)
    alpha_from_rule: bool = field(default=False, compare=False)

    @property
    def standard(self) -> bool:
        """False for AutoAttack with a reduced budget: its number is not comparable with published ones."""
        return not (self.family == "aa" and self.steps is not None)

    def stages(self) -> tuple[str, ...]:
        """AutoAttack's stages in order (each runs on the points the earlier ones left robust)."""
        return STAGES if self.family == "aa" else ()

    def run_stage(self, model: nn.Module, x: Tensor, y: Tensor, stage: str) -> Tensor:
        """One AutoAttack stage on ``(x, y)``; returns detached ``x_adv``."""
        iterations = self.steps or STANDARD_ITERATIONS
        queries = SQUARE_QUERIES if self.steps is None else AA_QUERIES_PER_ITERATION * self.steps
        return autoattack_stage(model, x, y, stage, norm=self.norm or "linf", eps=self.eps,
                                iterations=iterations, queries=queries)

    def describe(self) -> str:
        """One line saying exactly what runs, e.g. ``PGD-50×10 ℓ∞ ε=8/255 α=2/255, CE loss, ...``."""
        ball = f"{_NORM_SYMBOL.get(self.norm or '', '')} ε={format_number(self.eps)}"
        if self.family == "clean":
            return "no attack"
        if self.family == "fgsm":
            return f"FGSM {ball} (one signed step of ε, no random start)"
        if self.family == "aa":
            if self.steps is None:
                return f"AutoAttack standard {ball} (APGD-CE, APGD-T, FAB-T, Square)"
            return (f"AutoAttack NON-STANDARD budget {ball}: APGD-CE, APGD-T, FAB-T with {self.steps} iterations, "
                    f"Square {AA_QUERIES_PER_ITERATION * self.steps} queries (standard: {STANDARD_ITERATIONS}, "
                    f"{SQUARE_QUERIES}); a quick check, not comparable with published AutoAttack numbers")
        if self.family in ("ppgd", "lpa"):
            label = "Perceptual PGD" if self.family == "ppgd" else "Lagrangian perceptual attack"
            per = " per λ round, 5 rounds" if self.family == "lpa" else ", conjugate-gradient steps"
            return (f"{label}, LPIPS-{self.network} bound {self.eps:g}, {self.steps} steps{per}, margin loss κ=1, "
                    "projected onto the bound, worst in-bound iterate")
        if self.family == "stadv":
            return (f"StAdv spatial flow, ‖flow‖∞ ≤ {self.eps:g} (grid units), {self.steps} Adam steps, "
                    "margin loss + flow smoothness, worst iterate")
        if self.family == "recolor":
            return (f"ReColorAdv colour map, CIELUV displacement ≤ {self.eps:g}, {self.steps} Adam steps, "
                    "margin loss + smoothness, worst iterate")
        label = "PGD" if self.family == "pgd" else "CW"
        runs = f"{self.steps}×{self.restarts}" if self.restarts and self.restarts > 1 else f"{self.steps}"
        loss = "CE loss" if self.family == "pgd" else "CW margin loss"
        rule = f" ({STEP_RULE})" if self.alpha_from_rule else ""
        return (f"{label}-{runs} {ball} α={format_number(self.alpha or 0.0)}{rule}, {loss}, random start, "
                f"worst case over steps{' and restarts' if self.restarts and self.restarts > 1 else ''}")

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Attack ``model`` at ``(x, y)`` (images in [0, 1]); returns detached ``x_adv``."""
        return _RUNNERS[self.family](self, model, x, y)


_NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2"}


def _run_clean(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return x.detach().clone()


def _run_fgsm(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return fgsm(model, x, y, FGSMParams(eps=attack.eps, alpha=attack.eps, random_start=False))


def _run_pgd(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    params = PGDParams(norm=attack.norm or "linf", eps=attack.eps, alpha=attack.alpha or 0.0,
                       steps=attack.steps or 0, random_start=True, restarts=attack.restarts or 1,
                       loss="ce" if attack.family == "pgd" else "margin")
    return pgd(model, x, y, params, keep_best=True, l2_radius="uniform")


def _run_aa(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    iterations = attack.steps or STANDARD_ITERATIONS
    queries = SQUARE_QUERIES if attack.steps is None else AA_QUERIES_PER_ITERATION * attack.steps
    return autoattack(model, x, y, norm=attack.norm or "linf", eps=attack.eps, iterations=iterations,
                      queries=queries)


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


_RUNNERS: dict[str, Callable[[EvalAttack, nn.Module, Tensor, Tensor], Tensor]] = {
    "clean": _run_clean, "fgsm": _run_fgsm, "pgd": _run_pgd, "cw": _run_pgd, "aa": _run_aa,
    "ppgd": _run_ppgd, "lpa": _run_lpa, "stadv": _run_stadv, "recolor": _run_recolor,
}


class UnknownAttackError(UserError):
    """An evaluation attack name outside the grammar."""

    title = "unknown attack"


def _unknown(written: str, key: str) -> UserError:
    return UnknownAttackError(f"unknown attack '{written}'{did_you_mean(key, LISTED)} — valid: {GRAMMAR} "
                              f"(e.g. pgd20, pgd50x10, pgd50-l2, aa-l2@1, ppgd40, lpa40-alexnet, stadv100, unseen)")


Parsed = tuple[str, "str | None", "int | None", "int | None", "str | None"]


def _parse(name: str) -> Parsed | None:
    """``name`` → (family, norm, steps, restarts, LPIPS network) as the name writes them; None if not a name.

    The norm of an ℓp name without ``-l2`` is None: the caller's default ball decides (ℓ∞ without one).
    """
    if name in ("clean", "fgsm"):
        return name, (None if name == "clean" else "linf"), None, None, None
    match = _AA_NAME.fullmatch(name)
    if match:
        iterations, l2 = match.groups()
        return "aa", ("l2" if l2 else None), int(iterations) if iterations else None, None, None
    match = _PGD_NAME.fullmatch(name)
    if match:
        steps, restarts, l2 = match.groups()
        return "pgd", ("l2" if l2 else None), int(steps), int(restarts) if restarts else 1, None
    match = _CW_NAME.fullmatch(name)
    if match:
        return "cw", None, int(match.group(1)), 1, None
    match = _PERCEPTUAL_NAME.fullmatch(name)
    if match:
        family, steps, network = match.groups()
        return family, "lpips", int(steps), 1, network or "self"
    match = _UNSEEN_NAME.fullmatch(name)
    if match:
        family, steps = match.groups()
        return family, OTHER_METRICS[family][0], int(steps), 1, None
    return None


def _check_overrides(name: str, eps: float | None, alpha: float | None, steps: int | None,
                     restarts: int | None, norm: str | None) -> None:
    def bad(what: str) -> UserError:
        return UserError(f"attack '{name}': {what}")

    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise bad(f"eps must be a number >= 0, got {eps!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise bad(f"alpha (step size) must be a number > 0, got {alpha!r}")
    for key, value in (("steps", steps), ("restarts", restarts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(f"{key} must be an integer >= 1, got {value!r}")
    if norm is not None and norm not in _NORM_SYMBOL:
        raise bad(f"norm must be linf or l2, got {norm!r}")


def _split_bound(written: str, key: str) -> tuple[str, float | None, str | None]:
    """``'aa-l2@1'`` → (``'aa-l2'``, 1.0, ``'1'``); names without ``@`` pass through."""
    if "@" not in key:
        return key, None, None
    base, _, text = key.partition("@")
    try:
        value = parse_number(text.strip())
    except FractionError as err:
        raise UserError(f"attack '{written}': {err}") from None
    if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
        raise UserError(f"attack '{written}': the bound after '@' must be a number > 0 such as 8/255 or 0.5, "
                        f"got '{text}'")
    return base.strip(), value, text.strip()


def resolve_eval_attack(name: str, *, eps: float | None = None, alpha: float | None = None,
                        steps: int | None = None, restarts: int | None = None,
                        norm: str | None = None, eps_text: str | None = None, eps_source: str = "eps override",
                        default: Ball | None = None, lpips_default: Ball | None = None) -> EvalAttack:
    """Parse one evaluation attack name and apply overrides on top of its preset.

    Overrides that do not apply to a family are ignored, so one set of global ``--eps/--steps``
    flags can go with a list of attacks: ``clean`` ignores all of them, ``fgsm`` uses only ``eps``
    (its step is ε), ``aa`` ``eps``, ``norm`` and ``steps`` (a non-standard, labelled budget). For
    PGD/CW without ``alpha`` the step follows the final ε and steps by :data:`STEP_RULE`. ``eps``,
    ``alpha`` and ``norm`` are ℓp quantities: perceptual, flow and colour attacks ignore them and
    take their bound from ``@<bound>`` (``ppgd40@0.25``), else ``lpips_default`` (ppgd/lpa), else
    their preset; ``steps`` applies to them too. A bound written with ``@`` beats the ``eps``
    override, which beats ``default`` (used when its norm is the attack's, or None). An ℓp name
    without ``-l2`` and without ``@`` takes ``default``'s norm (ℓ∞ when there is none).

    Raises:
        UserError: unknown name (with a did-you-mean hint and the grammar), invalid override or
            bound, ``fgsm`` with ``norm='l2'``, or ``aa`` without the optional torchattacks package.
    """
    written = str(name).strip()
    key, bound, bound_text = _split_bound(written, written.lower())
    if key in GROUPS:
        if bound is not None:
            raise UserError(f"attack '{written}': the group '{key}' takes no bound; its attacks carry their own "
                            f"({', '.join(GROUPS[key])}): list them one by one to change a bound")
        raise UserError(f"'{written}' is a group of attacks ({', '.join(GROUPS[key])}); groups are expanded "
                        "by resolve_eval_attacks")
    parsed = _parse(key)
    if parsed is None:
        raise _unknown(written, key)
    family, parsed_norm, parsed_steps, parsed_restarts, network = parsed
    _check_overrides(key, eps, alpha, steps, restarts, norm)
    label = written.lower()
    if family == "clean":
        if bound is not None:
            raise UserError(f"attack '{written}': 'clean' takes no bound")
        return EvalAttack(key, "clean", None, 0.0, None, None, None)
    if family in OTHER_METRICS:
        n_steps = steps if steps is not None else parsed_steps or 1
        if bound is not None:
            radius, text, source = bound, bound_text, "@ suffix"
        elif lpips_default is not None and family in ("ppgd", "lpa"):
            radius, text, source = lpips_default.eps, lpips_default.text, lpips_default.source
        else:
            radius, text, source = OTHER_METRICS[family][1], None, "preset default"
        return EvalAttack(label, family, parsed_norm, radius, None, n_steps, 1, network, text, eps_source=source)
    final_norm = norm or parsed_norm
    if final_norm is None:
        usable = bound is None and default is not None and default.norm in _NORM_SYMBOL
        final_norm = default.norm if usable and default is not None and default.norm else "linf"
    if family == "fgsm" and final_norm != "linf":
        raise UserError(f"attack '{key}': FGSM is ℓ∞ only; for a one-step ℓ2 attack use pgd1-l2")
    if bound is not None:
        radius, text, source = bound, bound_text, "@ suffix"
    elif eps is not None:
        radius, text, source = float(eps), eps_text, eps_source
    elif default is not None and default.norm in (final_norm, None):
        radius, text, source = default.eps, default.text, default.source
    else:
        radius, text, source = (LINF_EPS if final_norm == "linf" else L2_EPS), None, "preset default"
    if family == "fgsm":
        return EvalAttack(label, "fgsm", "linf", radius, radius, 1, 1, eps_text=text, eps_source=source)
    if family == "aa":
        if importlib.util.find_spec("torchattacks") is None:
            raise UserError(f"attack '{key}' (AutoAttack) needs the optional torchattacks package: "
                            "pip install 'advtrain[autoattack]'")
        iterations = steps if steps is not None else parsed_steps
        return EvalAttack(label, "aa", final_norm, radius, None, iterations, None, eps_text=text,
                          eps_source=source)
    n_steps = steps if steps is not None else (parsed_steps if parsed_steps is not None else 0)
    if n_steps < 1:
        raise UserError(f"attack '{key}': steps must be >= 1 (e.g. pgd20)")
    n_restarts = restarts if restarts is not None else (parsed_restarts if parsed_restarts is not None else 1)
    if n_restarts < 1:
        raise UserError(f"attack '{key}': restarts must be >= 1 (e.g. pgd50x10)")
    step = float(alpha) if alpha is not None else step_for(radius, n_steps)
    return EvalAttack(label, family, final_norm, radius, step, n_steps, n_restarts, eps_text=text,
                      eps_source=source, alpha_from_rule=alpha is None)


def resolve_eval_attacks(names: list[str], **overrides: Any) -> list[EvalAttack]:
    """Resolve a list of names, expanding groups (``unseen``) in place; the first of duplicates wins.

    Each attack that came from a group remembers it, so reports can give the group's union accuracy.
    """
    attacks: list[EvalAttack] = []
    for name in names:
        key = str(name).strip().lower()
        if key in GROUPS:
            resolved = [dataclasses.replace(resolve_eval_attack(member, **overrides), group=key)
                        for member in GROUPS[key]]
        else:
            resolved = [resolve_eval_attack(name, **overrides)]
        attacks += [a for a in resolved if all(a.name != b.name for b in attacks)]
    return attacks


def list_eval_presets() -> list[tuple[str, str]]:
    """(name, description) for the listed presets and the grammar, for ``advtrain list attacks``."""
    aa_missing = "" if importlib.util.find_spec("torchattacks") else " [pip install 'advtrain[autoattack]']"
    rows = []
    for name in LISTED:
        if name in GROUPS:
            rows.append((name, f"group: {', '.join(GROUPS[name])} (PAT's unseen threat models on CIFAR-10)"))
        elif name.startswith("aa"):
            family, norm, iterations, _, _ = _parse(name) or ("aa", None, None, None, None)
            rows.append((name, EvalAttack(name, family, norm or "linf", L2_EPS if norm == "l2" else LINF_EPS,
                                          None, iterations, None).describe() + aa_missing))
        else:
            rows.append((name, resolve_eval_attack(name).describe()))
    rows += [("ε (advtrain eval)", "the checkpoint's threat model: its recipe's eval.eps if set, else its training "
              "attack's ε and norm (ppgd/lpa: its LPIPS bound); --eps or name@<bound> evaluate elsewhere and are "
              "labelled; without a checkpoint ball, the presets above (ℓ∞ 8/255, ℓ2 0.5)"),
             ("step rule", f"PGD/CW without --alpha: {STEP_RULE} for ℓ∞ and ℓ2, recomputed for --eps/--steps "
              "(ℓ∞ 8/255 with 10-50 steps: 2/255)"),
             ("pgd<N>[x<R>][-l2]", "PGD with N steps and R restarts; ℓ2 with -l2, else the checkpoint's norm (ℓ∞ "
              "without one), e.g. pgd100x5-l2"),
             ("aa<N>[-l2]", "AutoAttack with a NON-STANDARD budget of N iterations (Square: 50·N queries), "
              "for quick checks; --steps N does the same to aa"),
             ("cw<N>", "PGD with N steps on the CW margin loss, ℓ∞, e.g. cw200"),
             ("ppgd<N>[-net], lpa<N>[-net]", "perceptual attacks; net = self (default), alexnet, vgg, squeeze "
              "(ImageNet weights in the torch hub cache)"),
             ("<name>@<bound>", "any attack with its own bound, e.g. aa-l2@1, pgd50@4/255, ppgd40@0.25, stadv100@0.1")]
    return rows
