"""Evaluation attacks by name: one grammar, a table of families, one resolution rule.

A name is ``<family>[<steps>][x<restarts>][-<variant>][@<bound>]`` (:mod:`~advtrain.attacks.eval_names`):
``fgsm``, ``pgd<steps>[x<restarts>][-l2]``, ``cw<steps>``, ``aa[<iterations>][-l2]`` (with a number:
a smaller, NON-STANDARD AutoAttack budget), ``ppgd<steps>[-<net>]`` and ``lpa<steps>[-<net>]`` (LPIPS
ball, net = self | alexnet | vgg | squeeze), ``stadv<steps>`` (spatial flow), ``recolor<steps>``
(colour map). What each part means for a family is a row of
:data:`~advtrain.attacks.families.FAMILIES`. A group name expands to several attacks: ``unseen`` is
PAT's CIFAR-10 set (AutoAttack ℓ∞ 8/255, AutoAttack ℓ2 1, StAdv 0.05, ReColorAdv 0.06). ``clean`` is
accepted in a list but is not an attack: every evaluation measures clean accuracy first.

The ball comes from, in order: the ``@<bound>``, the ``eps`` override (ℓp families), the ``default``
ball the caller passes (``advtrain eval``: the checkpoint's own threat model, see
:func:`checkpoint_balls`), the family's preset (ℓ∞ 8/255, ℓ2 0.5, LPIPS 0.5, flow 0.05, colour 0.06).
An ℓp name without ``-l2`` and without ``@`` takes the default ball's norm. The PGD/CW step, unless
given, follows ε by one rule for both norms, :data:`STEP_RULE`. Steps and restarts, written in the
name or given as overrides, are bounded by :mod:`advtrain.attacks.budget` like every other budget.

PGD and CW presets run :func:`~advtrain.attacks.pgd.pgd` with ``keep_best=True``: per example the
worst point over all steps and restarts (a misclassified point wins, then the higher loss), so a
point fooled at some step is never counted as robust.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from advtrain.attacks.budget import RESTARTS, STEPS
from advtrain.attacks.eval_attack import EvalAttack
from advtrain.attacks.eval_names import AttackName, parse_name, shown, split_bound
from advtrain.attacks.families import AA_QUERIES_PER_ITERATION, FAMILIES, LP_BOUND, STEP_RULE, Family
from advtrain.attacks.threat import LP_NORMS, SYMBOL, HasThreat, Threat
from advtrain.errors import UserError, did_you_mean
from advtrain.params import format_number

#: Accepted in attack lists (``--attack clean,pgd20``) and dropped: clean accuracy is always measured.
CLEAN = "clean"
#: Named sets of attacks. ``unseen``: the PAT paper's unseen threat models on CIFAR-10.
GROUPS = {"unseen": ("aa@8/255", "aa-l2@1", "stadv100@0.05", "recolor100@0.06")}
GRAMMAR = (f"{CLEAN}, " + ", ".join(f.grammar() for f in FAMILIES.values())
           + ", each optionally @<bound>; groups: " + ", ".join(GROUPS))
LINF_EPS = LP_BOUND["linf"]
L2_EPS = LP_BOUND["l2"]

# Shown by `advtrain list attacks` and used for did-you-mean hints.
LISTED = ("fgsm", "pgd20", "pgd50", "pgd100", "pgd50x10", "pgd20-l2", "pgd50-l2", "pgd50x10-l2",
          "cw50", "cw100", "aa", "aa-l2", "aa10", "ppgd40", "lpa40", "ppgd40-alexnet", "lpa40-alexnet", "stadv100",
          "recolor100", *GROUPS)


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
        symbol = f"{SYMBOL[self.norm]} " if self.norm in SYMBOL else ""
        return f"{symbol}ε={self.text or format_number(self.eps)}"

    def threat(self) -> Threat | None:
        """The ball as a :class:`~advtrain.attacks.threat.Threat` (None for "any ℓp norm")."""
        return Threat(self.norm, self.eps, self.text) if self.norm else None


def checkpoint_balls(objective: str | None, attack: str | None, params: HasThreat | None,
                     eval_eps: float | None) -> tuple[Ball | None, Ball | None, Ball | None]:
    """(ℓp default, LPIPS default, training ball) of a checkpoint, from its stored recipe.

    The training ball is the training attack's own :meth:`threat` (ℓ∞/ℓ2 for pgd, fgsm, trades_kl;
    LPIPS for fast_lpa). The ℓp default is the recipe's ``eval.eps`` when set (in the training
    attack's norm when that is an ℓp attack), else the ℓp training ball; an LPIPS training ball is
    the default bound of ``ppgd``/``lpa``. A ``clean`` objective trains against no ball. Takes plain
    values, not a recipe: this module sits below the config layer.
    """
    trained = None
    if objective != "clean" and attack is not None and params is not None:
        threat = params.threat()
        if threat.metric in (*LP_NORMS, "lpips"):
            trained = Ball(threat.metric, threat.bound, f"checkpoint: training attack ({attack})")
    lp_trained = trained if trained is not None and trained.norm in LP_NORMS else None
    if eval_eps is not None:
        lp = Ball(lp_trained.norm if lp_trained else None, float(eval_eps), "checkpoint: recipe eval.eps")
    else:
        lp = lp_trained
    lpips = trained if trained is not None and trained.norm == "lpips" else None
    return lp, lpips, trained


class UnknownAttackError(UserError):
    """An evaluation attack name outside the grammar."""

    title = "unknown attack"


def _unknown(written: str, key: str, why: str = "") -> UserError:
    hint = did_you_mean(key, LISTED) if len(key) <= 40 else ""
    return UnknownAttackError(f"unknown attack '{shown(written)}'{why}{hint} — valid: {GRAMMAR} "
                              f"(e.g. pgd20, pgd50x10, pgd50-l2, aa-l2@1, ppgd40, lpa40-alexnet, stadv100, unseen)")


def _check_overrides(name: str, eps: float | None, alpha: float | None, steps: int | None,
                     restarts: int | None, norm: str | None) -> None:
    """Every override is checked, also those a family ignores: a bad flag is bad for any list."""
    def bad(what: str) -> UserError:
        return UserError(f"attack '{shown(name)}': {what}")

    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise bad(f"eps must be a number >= 0, got {eps!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise bad(f"alpha (step size) must be a number > 0, got {alpha!r}")
    if steps is not None:
        STEPS.check(steps, f"attack '{shown(name)}'")
    if restarts is not None:
        RESTARTS.check(restarts, f"attack '{shown(name)}'")
    if norm is not None and norm not in LP_NORMS:
        raise bad(f"norm must be linf or l2, got {norm!r}")


def _shape_problem(family: Family, parsed: AttackName) -> str:
    """Why the name's parts do not fit its family ('' when they do)."""
    if parsed.steps is not None and family.steps == "none":
        return f" ('{family.name}' takes no steps)"
    if parsed.steps is None and family.steps == "required":
        return f" ('{family.name}' needs its steps, e.g. {family.name}20)"
    if parsed.restarts is not None and not family.restarts_in_name:
        return f" ('{family.name}' takes no restarts in its name; --restarts sets them)"
    if parsed.variant is not None and parsed.variant not in family.variants:
        allowed = ", ".join(f"-{v}" for v in family.variants) or "none"
        return f" ('{family.name}' has no variant '-{shown(parsed.variant)}'; variants: {allowed})"
    return ""


def _norm(family: Family, parsed: AttackName, norm: str | None, default: Ball | None) -> str:
    """The metric of the ball: the family's own, else ``norm``, the name's ``-l2``, the default's, ℓ∞."""
    requested = norm if "norm" in family.overrides else None
    if family.metric is not None:
        if requested is not None and requested != family.metric:
            raise UserError(f"attack '{shown(parsed.key)}': {family.note or f'{family.name} is {family.metric} only'}")
        return family.metric
    if requested is not None:
        return requested
    if family.variant_role == "norm" and parsed.variant is not None:
        return parsed.variant
    usable = parsed.bound is None and default is not None and default.norm in LP_NORMS
    return default.norm if usable and default is not None and default.norm else "linf"


def _radius(family: Family, parsed: AttackName, metric: str, eps: float | None, eps_text: str | None,
            eps_source: str, default: Ball | None,
            lpips_default: Ball | None) -> tuple[float, str | None, str]:
    """(bound, as written, where it came from) by the order in the module docstring."""
    if parsed.bound is not None:
        return parsed.bound, parsed.bound_text, "@ suffix"
    if family.lp:
        if eps is not None and "eps" in family.overrides:
            return float(eps), eps_text, eps_source
        if default is not None and default.norm in (metric, None):
            return default.eps, default.text, default.source
        return LP_BOUND[metric], None, "preset default"
    if family.lpips_default and lpips_default is not None:
        return lpips_default.eps, lpips_default.text, lpips_default.source
    return float(family.bound or 0.0), None, "preset default"


def _budget(family: Family, parsed: AttackName, steps: int | None,
            restarts: int | None) -> tuple[int | None, int | None]:
    """(steps, restarts) that will run: override, else the name, else the family's default."""
    where = f"attack '{shown(parsed.written)}'"
    if steps is not None and "steps" in family.overrides:
        n_steps: int | None = steps
    elif parsed.steps is not None:
        n_steps = STEPS.from_digits(parsed.steps, where)
    else:
        n_steps = family.default_steps
    if "restarts" not in family.overrides:
        return n_steps, family.restarts
    if restarts is not None:
        return n_steps, restarts
    if parsed.restarts is not None:
        return n_steps, RESTARTS.from_digits(parsed.restarts, where)
    return n_steps, 1


def _resolve(name: str, *, eps: float | None, alpha: float | None, steps: int | None, restarts: int | None,
             norm: str | None, eps_text: str | None, eps_source: str, default: Ball | None,
             lpips_default: Ball | None, check_packages: bool = True) -> EvalAttack:
    written = str(name).strip()
    key, bound, _ = split_bound(written)
    if key in GROUPS:
        if bound is not None:
            raise UserError(f"attack '{shown(written)}': the group '{key}' takes no bound; its attacks carry their "
                            f"own ({', '.join(GROUPS[key])}): list them one by one to change a bound")
        raise UserError(f"'{written}' is a group of attacks ({', '.join(GROUPS[key])}); groups are expanded "
                        "by resolve_eval_attacks")
    if key == CLEAN and bound is not None:
        raise UserError(f"attack '{shown(written)}': 'clean' takes no bound (clean accuracy is measured without "
                        "attack, in every evaluation)")
    if key == CLEAN:
        raise UserError(f"'{shown(written)}' is not an attack: every evaluation measures clean accuracy "
                        "(a list of attacks may name it; it is dropped there)")
    parsed = parse_name(written)
    family = FAMILIES.get(parsed.family) if parsed is not None else None
    if parsed is None or family is None:
        raise _unknown(written, key)
    why = _shape_problem(family, parsed)
    if why:
        raise _unknown(written, key, why)
    _check_overrides(key, eps, alpha, steps, restarts, norm)
    metric = _norm(family, parsed, norm, default)
    radius, text, source = _radius(family, parsed, metric, eps, eps_text, eps_source, default, lpips_default)
    n_steps, n_restarts = _budget(family, parsed, steps, restarts)
    if check_packages and family.needs and importlib.util.find_spec(family.needs) is None:
        raise UserError(f"attack '{shown(key)}' (AutoAttack) needs the optional {family.needs} package: "
                        "pip install 'advtrain[autoattack]'")
    step: float | None = None
    if family.name == "fgsm":
        step = radius  # plain FGSM: one step of exactly ε
    elif family.lp and "alpha" in family.overrides:
        step = float(alpha) if alpha is not None else step_for(radius, n_steps or 1)
    network = None
    if family.variant_role == "network":
        network = parsed.variant or family.default_variant
    queries = AA_QUERIES_PER_ITERATION * n_steps if family.name == "aa" and n_steps else None
    return EvalAttack(written.lower(), family.name, metric, radius, step, n_steps, n_restarts, network, text,
                      eps_source=source, alpha_from_rule=step is not None and family.name != "fgsm" and alpha is None,
                      queries=queries)


def resolve_eval_attack(name: str, *, eps: float | None = None, alpha: float | None = None,
                        steps: int | None = None, restarts: int | None = None,
                        norm: str | None = None, eps_text: str | None = None, eps_source: str = "eps override",
                        default: Ball | None = None, lpips_default: Ball | None = None) -> EvalAttack:
    """Parse one evaluation attack name and apply overrides on top of its family's preset.

    Overrides that do not apply to a family (its row's ``overrides``) are ignored, so one set of
    global ``--eps/--steps`` flags can go with a list of attacks: ``fgsm`` uses only ``eps`` (its
    step is ε), ``aa`` ``eps``, ``norm`` and ``steps`` (a non-standard, labelled budget); the
    perceptual, flow and colour families only ``steps`` and take their bound from ``@<bound>``,
    else ``lpips_default`` (ppgd/lpa), else their preset. For PGD/CW without ``alpha`` the step
    follows the final ε and steps by :data:`STEP_RULE`.

    Raises:
        UserError: unknown name (with a did-you-mean hint and the grammar), a budget out of its
            bounds, an invalid override or bound, ``fgsm`` with ``norm='l2'``, ``clean`` or a group
            name, or ``aa`` without the optional torchattacks package.
    """
    return _resolve(name, eps=eps, alpha=alpha, steps=steps, restarts=restarts, norm=norm, eps_text=eps_text,
                    eps_source=eps_source, default=default, lpips_default=lpips_default)


def is_clean(name: str) -> bool:
    """Whether a list entry names clean accuracy (kept out of the attacks; always measured)."""
    return str(name).strip().lower() == CLEAN


def resolve_eval_attacks(names: list[str], **overrides: Any) -> list[EvalAttack]:
    """Resolve a list of names, expanding groups (``unseen``) in place and dropping ``clean``.

    The first of duplicates wins. Each attack that came from a group remembers it, so reports can
    give the group's union accuracy.
    """
    attacks: list[EvalAttack] = []
    for name in names:
        key = str(name).strip().lower()
        if key == CLEAN:
            continue
        if key in GROUPS:
            resolved = [dataclasses.replace(resolve_eval_attack(member, **overrides), group=key)
                        for member in GROUPS[key]]
        else:
            resolved = [resolve_eval_attack(name, **overrides)]
        attacks += [a for a in resolved if all(a.name != b.name for b in attacks)]
    return attacks


def _preview(name: str) -> str:
    """The description of a listed name, also when an optional package is missing."""
    return _resolve(name, eps=None, alpha=None, steps=None, restarts=None, norm=None, eps_text=None,
                    eps_source="", default=None, lpips_default=None, check_packages=False).describe()


def _family_row(family: Family) -> tuple[str, str]:
    if family.lp:
        ball = f"{SYMBOL[family.metric]} ball" if family.metric else "ℓ∞ or ℓ2 ball (-l2, or the checkpoint's norm)"
    else:
        ball = f"{SYMBOL[family.metric or '']} bound, default {family.bound:g}"
    takes = " ".join(f"--{o}" for o in ("eps", "alpha", "steps", "restarts") if o in family.overrides)
    return f"{family.grammar()} (family)", f"{family.summary}; {ball}; flags that apply: {takes or 'none'}"


def list_eval_presets() -> list[tuple[str, str]]:
    """(name, description) for the listed presets, clean, the families and the rules, for ``advtrain list attacks``."""
    aa_missing = "" if importlib.util.find_spec("torchattacks") else " [pip install 'advtrain[autoattack]']"
    rows = []
    for name in LISTED:
        if name in GROUPS:
            rows.append((name, f"group: {', '.join(GROUPS[name])} (PAT's unseen threat models on CIFAR-10)"))
        else:
            rows.append((name, _preview(name) + (aa_missing if FAMILIES[parse_name(name).family].needs else "")))
    rows.append((CLEAN, "clean accuracy: measured first in every evaluation and always reported; a list may "
                 "name it, it is not an attack"))
    rows += [_family_row(family) for family in FAMILIES.values()]
    rows += [("ε (advtrain eval)", "the checkpoint's threat model: its recipe's eval.eps if set, else its training "
              "attack's ε and norm (ppgd/lpa: its LPIPS bound); --eps or name@<bound> evaluate elsewhere and are "
              "labelled; without a checkpoint ball, the presets above (ℓ∞ 8/255, ℓ2 0.5)"),
             ("step rule", f"PGD/CW without --alpha: {STEP_RULE} for ℓ∞ and ℓ2, recomputed for --eps/--steps "
              "(ℓ∞ 8/255 with 10-50 steps: 2/255)"),
             ("budget bounds", f"steps {STEPS.range_text()}, restarts {RESTARTS.range_text()}, in a name, a flag or a "
              "recipe alike; aa<N>: N iterations, Square 50·N queries (aa = aa100, the standard budget)"),
             ("<name>@<bound>", "any attack with its own bound, e.g. aa-l2@1, pgd50@4/255, ppgd40@0.25, stadv100@0.1")]
    return rows


__all__ = ["CLEAN", "GRAMMAR", "GROUPS", "LISTED", "STEP_RULE", "Ball", "EvalAttack", "UnknownAttackError",
           "checkpoint_balls", "is_clean", "list_eval_presets", "resolve_eval_attack", "resolve_eval_attacks",
           "step_for"]
