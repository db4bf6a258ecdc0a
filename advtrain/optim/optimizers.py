"""Optimizers registry (``optim.name`` in recipes): ``OPTIMIZERS.get(name).build(params, model=model)``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from advtrain.params import param
from advtrain.registry import Registry

OPTIMIZERS = Registry("optimizer")


@dataclass
class SGDParams:
    """SGD with momentum (the adversarial-training default)."""

    lr: float = param(0.1, gt=0, le=10, help="peak learning rate")
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0, le=1)
    nesterov: bool = param(False)


@dataclass
class AdamParams:
    """Adam / AdamW."""

    lr: float = param(1e-3, gt=0, le=10, help="peak learning rate")
    betas: list[float] = param([0.9, 0.999], ge=0, lt=1, length=2, help="(beta1, beta2)")
    weight_decay: float = param(0.0, ge=0, le=1)


@dataclass
class AdamWParams(AdamParams):
    """AdamW: decoupled weight decay."""

    weight_decay: float = param(0.01, ge=0, le=1)


def _groups(model: nn.Module) -> Iterable[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@OPTIMIZERS.register("sgd", SGDParams)
def sgd(params: SGDParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay."""
    return torch.optim.SGD(_groups(model), lr=params.lr, momentum=params.momentum,
                           weight_decay=params.weight_decay, nesterov=params.nesterov and params.momentum > 0)


@OPTIMIZERS.register("adam", AdamParams)
def adam(params: AdamParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """Adam."""
    return torch.optim.Adam(_groups(model), lr=params.lr, betas=tuple(params.betas),
                            weight_decay=params.weight_decay)


@OPTIMIZERS.register("adamw", AdamWParams)
def adamw(params: AdamWParams, *, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW."""
    return torch.optim.AdamW(_groups(model), lr=params.lr, betas=tuple(params.betas),
                             weight_decay=params.weight_decay)
