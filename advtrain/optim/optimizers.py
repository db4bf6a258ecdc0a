"""Optimizers registry (``optim.name`` in recipes): ``OPTIMIZERS.get(name).build(params, model=model)``.

``optim.fused`` picks torch's fused implementation, which runs the whole update of every
parameter in a few kernels instead of a few per parameter (on a GPU, where a small model's
update is launch-bound). It computes the same update (up to floating-point rounding) and keeps
the same state (momentum buffers, step counts), so a checkpoint trained with it resumes without
it and the other way round: like ``train.compile`` it is a runtime choice, not a setting of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advtrain.errors import UserError
from advtrain.params import param
from advtrain.registry import Registry

OPTIMIZERS = Registry("optimizer")

_FUSED_HELP = ("torch's fused update (a few kernels for all parameters): auto (on for CUDA, off elsewhere), "
               "true (also on a CPU, where this torch supports it) or false")


def fused_wanted(setting: bool | str, device: torch.device) -> bool:
    """``optim.fused``: true, false, or ``auto`` (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def build_fused(make: Callable[..., torch.optim.Optimizer], setting: bool | str, name: str,
                params: list[nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """``make(params, fused=..., **kwargs)`` as ``optim.fused`` asks.

    Off, ``fused`` is left to torch (None: the multi-tensor update where it can), exactly as before
    the setting existed. ``true`` where this torch or device has no fused ``name`` is the user's
    error (exit 2, naming the key); ``auto`` then quietly keeps the unfused update.
    """
    device = params[0].device if params else torch.device("cpu")
    if not fused_wanted(setting, device):
        return make(params, **kwargs)
    try:
        return make(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:
        if setting == "auto":
            return make(params, **kwargs)
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"optim.fused: true, but torch {torch.__version__} has no fused '{name}' update for these "
                        f"parameters on {device.type} ({type(err).__name__}: {detail}); set optim.fused=auto (fused "
                        f"on CUDA only) or optim.fused=false.") from None


@dataclass
class SGDParams:
    """SGD with momentum (the adversarial-training default)."""

    lr: float = param(0.1, gt=0, le=10, help="peak learning rate")
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0, le=1)
    nesterov: bool = param(False)
    fused: bool | str = param("auto", choices=(True, False, "auto"), help=_FUSED_HELP)


@dataclass
class AdamParams:
    """Adam / AdamW."""

    lr: float = param(1e-3, gt=0, le=10, help="peak learning rate")
    betas: list[float] = param([0.9, 0.999], ge=0, lt=1, length=2, help="(beta1, beta2)")
    weight_decay: float = param(0.0, ge=0, le=1)
    fused: bool | str = param("auto", choices=(True, False, "auto"), help=_FUSED_HELP)


@dataclass
class AdamWParams(AdamParams):
    """AdamW: decoupled weight decay."""

    weight_decay: float = param(0.01, ge=0, le=1)


def _groups(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@OPTIMIZERS.register("sgd", SGDParams)
def sgd(params: SGDParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay."""
    return build_fused(torch.optim.SGD, params.fused, "sgd", _groups(model), lr=params.lr, momentum=params.momentum,
                       weight_decay=params.weight_decay, nesterov=params.nesterov and params.momentum > 0)


@OPTIMIZERS.register("adam", AdamParams)
def adam(params: AdamParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """Adam."""
    return build_fused(torch.optim.Adam, params.fused, "adam", _groups(model), lr=params.lr,
                       betas=tuple(params.betas), weight_decay=params.weight_decay)


@OPTIMIZERS.register("adamw", AdamWParams)
def adamw(params: AdamWParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW."""
    return build_fused(torch.optim.AdamW, params.fused, "adamw", _groups(model), lr=params.lr,
                       betas=tuple(params.betas), weight_decay=params.weight_decay)
