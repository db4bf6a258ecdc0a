"""AutoAttack "standard" (Croce & Hein 2020) through torchattacks, with the official settings.

The headline robustness number: APGD-CE, then APGD-T, FAB-T and Square, each run only on the
points still classified correctly. :func:`autoattack_stage` runs one stage, so an evaluation can
run each stage over the whole split on the points still robust, report the accuracy after each
stage and show its progress. ``torchattacks`` is an optional extra
(``pip install 'advtrain[autoattack]'``), imported only when this attack runs.

Why the ensemble is assembled here from torchattacks' own ``APGD``/``APGDT``/``FAB``/``Square``
instead of calling ``torchattacks.AutoAttack(version='standard')``: in
torchattacks 3.5 that class leaves APGD, APGD-T and FAB-T at their 10-iteration defaults (the
official standard version uses 100), keeps Square's rescaled p-schedule (official:
``resc_schedule=False``) and uses ``n_classes − 1`` target classes (official: 9). Those
differences make the attack weaker or slower than the protocol RobustBench numbers are measured
with, so the settings below follow fra31/auto-attack's ``set_version('standard')``.

Other torchattacks behaviours handled here:

- it moves inputs to the device of the model's first parameter and returns them there; the result
  is moved back to the inputs' device;
- it normalises inputs itself only for MAIR ``RobModel`` models or after
  ``set_normalization_used``; our models normalise inside ``forward``, and that is checked;
- every sub-attack re-seeds the *global* torch RNG (``torch.manual_seed(seed)``) on each call,
  which would make the training loop's augmentation and random starts repeat after every
  evaluation; the global RNG state is saved and restored around the attack;
- the number of target classes comes from ``n_classes`` (targets = ``n_classes − 1``), so it is
  inferred from one forward pass and capped to give the official 9 targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks._common import project
from advtrain.errors import UserError
from advtrain.runtime.modes import eval_mode

# fra31/auto-attack, version='standard' (ℓ∞ and ℓ2).
STANDARD_ITERATIONS = 100
STANDARD_TARGET_CLASSES = 9
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8


def _import_torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError as err:
        raise UserError("AutoAttack (attacks 'aa' and 'aa-l2') needs the optional torchattacks package: "
                        "pip install 'advtrain[autoattack]'") from err
    return torchattacks


@contextmanager
def _preserved_rng(device: torch.device) -> Iterator[None]:
    """Save and restore the global CPU (and this CUDA device's) RNG state."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("AutoAttack through torchattacks needs a model with parameters (it takes the "
                         "device from them)") from None


STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
#: The stages that follow the gradient; Square is gradient-free (what it finds beyond them hints at masking).
GRADIENT_STAGES = STAGES[:3]


def _stage_attacks(ta: Any, model: nn.Module, norm: str, eps: float, seed: int, n_classes: int, *,
                   iterations: int = STANDARD_ITERATIONS, queries: int = SQUARE_QUERIES) -> dict[str, Any]:
    """APGD-CE, APGD-T, FAB-T and Square as torchattacks objects, by stage name (official settings
    at the default budget; ``iterations``/``queries`` give the smaller, non-standard ones)."""
    # torchattacks derives the number of target classes as n_classes - 1 (and uses n_classes for
    # nothing else in APGDT/FAB): pass 10 to get the official 9 targets, fewer for < 10 classes.
    targets_plus_one = min(n_classes, STANDARD_TARGET_CLASSES + 1)
    common = {"norm": norm, "eps": eps, "seed": seed, "verbose": False}
    attacks = {
        "apgd-ce": ta.APGD(model, steps=iterations, n_restarts=1, loss="ce", eot_iter=1, rho=0.75, **common),
        "apgd-t": ta.APGDT(model, steps=iterations, n_restarts=1, eot_iter=1, rho=0.75,
                           n_classes=targets_plus_one, **common),
        "fab-t": ta.FAB(model, steps=iterations, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
                        multi_targeted=True, n_classes=targets_plus_one, **common),
        "square": ta.Square(model, n_queries=queries, n_restarts=1, p_init=SQUARE_P_INIT, loss="margin",
                            resc_schedule=False, **common),
    }
    if any(a.normalization_used is not None for a in attacks.values()):  # pragma: no cover - MAIR models only
        raise ValueError("torchattacks would normalise the inputs itself; advtrain models normalise inside "
                         "forward, so this would normalise twice")
    return attacks


def _check_inputs(x: Tensor, norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"AutoAttack norm must be linf or l2, got '{norm}'")
    if x.shape[0] and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("AutoAttack expects images in [0, 1] (normalisation belongs inside the model), "
                         f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def autoattack_stage(model: nn.Module, x: Tensor, y: Tensor, stage: str, *, norm: str = "linf",
                     eps: float = 8 / 255, seed: int = 0, iterations: int = STANDARD_ITERATIONS,
                     queries: int = SQUARE_QUERIES) -> Tensor:
    """One stage of AutoAttack (``apgd-ce``, ``apgd-t``, ``fab-t`` or ``square``) on ``(x, y)``.

    The caller runs the stages in order on the points the earlier ones left robust (as the
    original does; :func:`autoattack` is that cascade for one batch). Eval mode, fp32, the global
    RNG left as found, the result in the ball and in [0, 1]; examples it does not fool may come
    back moved or unchanged.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown AutoAttack stage '{stage}' (expected one of {', '.join(STAGES)})")
    _check_inputs(x, norm)
    ta = _import_torchattacks()
    if x.shape[0] == 0 or eps == 0:
        return x.detach().clone()
    device = _model_device(model)
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad(), _preserved_rng(device), \
            torch.autocast(device_type=device.type, enabled=False):
        x0 = x.detach().to(device=device, dtype=torch.float32, copy=True)
        y0 = y.detach().to(device=device, copy=True)
        with torch.no_grad():
            n_classes = int(model(x0[:1]).shape[1])
        if n_classes < 2:
            raise ValueError(f"AutoAttack needs at least 2 classes, the model outputs {n_classes}")
        attacks = _stage_attacks(ta, model, {"linf": "Linf", "l2": "L2"}[norm], eps, seed, n_classes,
                                 iterations=iterations, queries=queries)
        x_adv = attacks[stage](x0, y0).detach().float()
        # Defensive: the sub-attacks project in float arithmetic (APGD's ℓ2 step adds 1e-12 to
        # norms, FAB interpolates), which can overshoot the ball or [0, 1] by rounding error.
        # Re-projecting costs nothing and guarantees the contract.
        x_adv = project(x_adv, x0, norm, eps)
    return x_adv.to(device=x.device, dtype=x.dtype)


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf", eps: float = 8 / 255,
               seed: int = 0, iterations: int = STANDARD_ITERATIONS, queries: int = SQUARE_QUERIES) -> Tensor:
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) in the ℓ∞ or ℓ2 ball; detached ``x_adv``.

    Each stage attacks only the points still classified correctly (misclassified clean points are
    not attacked); examples no stage fools come back unchanged. Runs in eval mode (restored
    afterwards), in fp32 (any outer autocast is switched off: the headline number must not depend
    on training precision), and leaves the global RNG as it found it.

    Args:
        model: maps [0, 1] images to logits (normalisation inside the model).
        x: clean images in [0, 1], N×C×H×W.
        y: labels, shape (N,).
        norm: ``linf`` or ``l2``.
        eps: radius of the ball.
        seed: seed of the sub-attacks' random starts (AutoAttack re-seeds per call, as upstream).
        iterations: APGD/FAB iterations (100 = standard; fewer is a non-standard quick budget).
        queries: Square's queries (5000 = standard).
    """
    _check_inputs(x, norm)
    _import_torchattacks()
    if x.shape[0] == 0 or eps == 0:
        return x.detach().clone()
    x_adv = x.detach().clone()
    with eval_mode(model), torch.no_grad():
        robust = model(x_adv.to(_model_device(model), torch.float32)).argmax(1).to(y.device) == y
    for stage in STAGES:
        rows = robust.nonzero().flatten()
        if len(rows) == 0:
            break
        found = autoattack_stage(model, x[rows], y[rows], stage, norm=norm, eps=eps, seed=seed,
                                 iterations=iterations, queries=queries)
        with eval_mode(model), torch.no_grad():
            fooled = model(found.to(_model_device(model), torch.float32)).argmax(1).to(y.device) != y[rows]
        x_adv[rows[fooled]] = found[fooled]
        robust[rows[fooled]] = False
    return x_adv
