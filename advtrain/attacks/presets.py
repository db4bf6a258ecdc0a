"""Evaluation attacks behind one name grammar: ``clean``, ``fgsm``, ``pgd<steps>[x<restarts>][-l2]``,
``cw<steps>``, ``aa``, ``aa-l2``.

A name parses into a family (clean | fgsm | pgd | cw | aa), a norm, steps and restarts; the
field's defaults fill the rest (ℓ∞: ε = 8/255, step 2/255; ℓ2: ε = 0.5, step 2.5·ε/steps;
random start) and ``--eps/--alpha/--steps/--restarts/--norm`` overrides apply on top. Variants
are data over four runners, not one class per preset.

PGD and CW presets run :func:`~advtrain.attacks.pgd.pgd` with ``keep_best=True``: per example the
worst point over all steps and restarts (a misclassified point wins, then the higher loss), so a
point fooled at some step is never counted as robust.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from advtrain.attacks.autoattack import autoattack
from advtrain.attacks.fgsm import FGSMParams, fgsm
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.errors import UserError, did_you_mean

GRAMMAR = "clean, fgsm, pgd<steps>[x<restarts>][-l2], cw<steps>, aa, aa-l2"
FAMILIES = ("clean", "fgsm", "pgd", "cw", "aa")
LINF_EPS = 8 / 255
LINF_ALPHA = 2 / 255
L2_EPS = 0.5
L2_ALPHA_FACTOR = 2.5  # ℓ2 step = 2.5·ε/steps (Madry et al.)

# Shown by `advtrain list attacks` and used for did-you-mean hints.
LISTED = ("clean", "fgsm", "pgd20", "pgd50", "pgd100", "pgd50x10", "pgd20-l2", "pgd50-l2", "pgd50x10-l2",
          "cw50", "cw100", "aa", "aa-l2")

_PGD_NAME = re.compile(r"pgd(\d+)(?:x(\d+))?(-l2)?")
_CW_NAME = re.compile(r"cw(\d+)")


@dataclass(frozen=True)
class EvalAttack:
    """A fully resolved evaluation attack; fields that do not apply to a family are ``None``.

    ``clean``: no attack (``eps`` 0). ``fgsm``: one step of ε, no random start. ``pgd``/``cw``:
    PGD on cross-entropy / CW margin. ``aa``: AutoAttack standard (parameter-free: no α, steps or
    restarts).
    """

    name: str
    family: str
    norm: str | None
    eps: float
    alpha: float | None
    steps: int | None
    restarts: int | None

    def describe(self) -> str:
        """One line saying exactly what runs, e.g. ``PGD-50×10 ℓ∞ ε=8/255 α=2/255, CE loss, ...``."""
        ball = f"{_NORM_SYMBOL.get(self.norm or '', '')} ε={_fmt(self.eps)}"
        if self.family == "clean":
            return "no attack"
        if self.family == "fgsm":
            return f"FGSM {ball} (one signed step of ε, no random start)"
        if self.family == "aa":
            return f"AutoAttack standard {ball} (APGD-CE, APGD-T, FAB-T, Square)"
        label = "PGD" if self.family == "pgd" else "CW"
        runs = f"{self.steps}×{self.restarts}" if self.restarts and self.restarts > 1 else f"{self.steps}"
        loss = "CE loss" if self.family == "pgd" else "CW margin loss"
        return (f"{label}-{runs} {ball} α={_fmt(self.alpha or 0.0)}, {loss}, random start, "
                f"worst case over steps{' and restarts' if self.restarts and self.restarts > 1 else ''}")

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Attack ``model`` at ``(x, y)`` (images in [0, 1]); returns detached ``x_adv``."""
        return _RUNNERS[self.family](self, model, x, y)


_NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2"}


def _fmt(value: float) -> str:
    """``8/255`` for whole 255ths (how papers write ℓ∞ budgets), else a short decimal."""
    scaled = value * 255
    if value > 0 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:.4g}"


def _run_clean(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return x.detach().clone()


def _run_fgsm(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return fgsm(model, x, y, FGSMParams(eps=attack.eps, alpha=attack.eps, random_start=False))


def _run_pgd(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    params = PGDParams(norm=attack.norm or "linf", eps=attack.eps, alpha=attack.alpha or 0.0,
                       steps=attack.steps or 0, random_start=True, restarts=attack.restarts or 1,
                       loss="ce" if attack.family == "pgd" else "margin")
    return pgd(model, x, y, params, keep_best=True)


def _run_aa(attack: EvalAttack, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return autoattack(model, x, y, norm=attack.norm or "linf", eps=attack.eps)


_RUNNERS: dict[str, Callable[[EvalAttack, nn.Module, Tensor, Tensor], Tensor]] = {
    "clean": _run_clean, "fgsm": _run_fgsm, "pgd": _run_pgd, "cw": _run_pgd, "aa": _run_aa,
}


class UnknownAttackError(UserError):
    """An evaluation attack name outside the grammar."""

    title = "unknown attack"


def _unknown(written: str, key: str) -> UserError:
    return UnknownAttackError(f"unknown attack '{written}'{did_you_mean(key, LISTED)} — valid: {GRAMMAR} "
                              f"(e.g. pgd20, pgd50x10, pgd50-l2, pgd50x10-l2, cw50)")


def _parse(name: str) -> tuple[str, str | None, int | None, int | None] | None:
    """``name`` → (family, norm, steps, restarts) as the name writes them; None if not a name."""
    if name in ("clean", "fgsm"):
        return name, (None if name == "clean" else "linf"), None, None
    if name in ("aa", "aa-l2"):
        return "aa", ("l2" if name == "aa-l2" else "linf"), None, None
    match = _PGD_NAME.fullmatch(name)
    if match:
        steps, restarts, l2 = match.groups()
        return "pgd", ("l2" if l2 else "linf"), int(steps), int(restarts) if restarts else 1
    match = _CW_NAME.fullmatch(name)
    if match:
        return "cw", "linf", int(match.group(1)), 1
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


def resolve_eval_attack(name: str, *, eps: float | None = None, alpha: float | None = None,
                        steps: int | None = None, restarts: int | None = None,
                        norm: str | None = None) -> EvalAttack:
    """Parse an evaluation attack name and apply overrides on top of its preset.

    Overrides that do not apply to a family are ignored, so one set of global ``--eps/--steps``
    flags can go with a list of attacks: ``clean`` ignores all of them, ``fgsm`` uses only ``eps``
    (its step is ε), ``aa`` only ``eps`` and ``norm``. For PGD/CW an ``eps`` or ``steps`` override
    without ``alpha`` recomputes the ℓ2 step as 2.5·ε/steps; the ℓ∞ step stays 2/255.

    Raises:
        UserError: unknown name (with a did-you-mean hint and the grammar), invalid override,
            ``fgsm`` with ``norm='l2'``, or ``aa`` without the optional torchattacks package.
    """
    written = str(name).strip()
    key = written.lower()
    parsed = _parse(key)
    if parsed is None:
        raise _unknown(written, key)
    family, parsed_norm, parsed_steps, parsed_restarts = parsed
    _check_overrides(key, eps, alpha, steps, restarts, norm)
    if family == "clean":
        return EvalAttack(key, "clean", None, 0.0, None, None, None)
    final_norm = norm or parsed_norm or "linf"
    if family == "fgsm" and final_norm != "linf":
        raise UserError(f"attack '{key}': FGSM is ℓ∞ only; for a one-step ℓ2 attack use pgd1-l2")
    radius = float(eps) if eps is not None else (LINF_EPS if final_norm == "linf" else L2_EPS)
    if family == "fgsm":
        return EvalAttack(key, "fgsm", "linf", radius, radius, 1, 1)
    if family == "aa":
        if importlib.util.find_spec("torchattacks") is None:
            raise UserError(f"attack '{key}' (AutoAttack) needs the optional torchattacks package: "
                            "pip install 'advtrain[autoattack]'")
        return EvalAttack(key, "aa", final_norm, radius, None, None, None)
    n_steps = steps if steps is not None else (parsed_steps if parsed_steps is not None else 0)
    if n_steps < 1:
        raise UserError(f"attack '{key}': steps must be >= 1 (e.g. pgd20)")
    n_restarts = restarts if restarts is not None else (parsed_restarts if parsed_restarts is not None else 1)
    if n_restarts < 1:
        raise UserError(f"attack '{key}': restarts must be >= 1 (e.g. pgd50x10)")
    if alpha is not None:
        step = float(alpha)
    elif final_norm == "l2":
        step = L2_ALPHA_FACTOR * radius / n_steps
    else:
        step = LINF_ALPHA
    return EvalAttack(key, family, final_norm, radius, step, n_steps, n_restarts)


def list_eval_presets() -> list[tuple[str, str]]:
    """(name, description) for the listed presets and the grammar, for ``advtrain list attacks``."""
    rows = [(name, resolve_eval_attack(name).describe()) for name in LISTED if name not in ("aa", "aa-l2")]
    rows += [(name, EvalAttack(name, "aa", "l2" if name.endswith("l2") else "linf",
                               L2_EPS if name.endswith("l2") else LINF_EPS, None, None, None).describe()
              + ("" if importlib.util.find_spec("torchattacks") else " [pip install 'advtrain[autoattack]']"))
             for name in ("aa", "aa-l2")]
    rows += [("pgd<N>[x<R>][-l2]", "PGD with N steps and R restarts, ℓ∞ (ℓ2 with -l2), e.g. pgd100x5-l2"),
             ("cw<N>", "PGD with N steps on the CW margin loss, ℓ∞, e.g. cw200")]
    return rows
