"""Fast-LPA: the Lagrangian perceptual attack PAT trains with (Laidlaw et al. 2021, Alg. 3).

Each step moves against the normalised gradient of −margin(x') + λ·max(0, d(x, x') − bound),
scaled so that the LPIPS distance changes by about the current step size (the change along the
direction is estimated with a finite difference); the step decays from ``step`` to ``step``/10 and
λ grows from 1 to ``lam_max``. There is no projection: the penalty keeps the distance near the
bound, and the achieved distance can be read from the returned point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.budget import STEPS
from advtrain.attacks.perceptual.distance import LPIPS_NETWORKS, build_distance
from advtrain.attacks.threat import Threat
from advtrain.params import param

FINITE_DIFFERENCE = 0.1


@dataclass
class FastLPAParams:
    """Fast Lagrangian perceptual attack (training)."""

    bound: float = param(0.5, gt=0, le=100, help="LPIPS bound (0.5 CIFAR, 0.25 ImageNet in PAT)")
    steps: int = STEPS.param(10, help="gradient steps")
    step: float | None = param(None, gt=0, le=100, help="first step in LPIPS units (default: the bound)")
    lam_max: float = param(10.0, gt=0, le=1e6, help="final Lagrange multiplier")
    lpips: str = param("self", choices=LPIPS_NETWORKS,
                       help="feature network of the distance (self = the classifier being trained)")
    only_attack_correct: bool = param(True, help="leave examples the model already gets wrong unchanged")

    def threat(self) -> Threat:
        return Threat("lpips", float(self.bound))


def fast_lpa(model: nn.Module, x: Tensor, y: Tensor, params: FastLPAParams, *, loss_fn: Any = None,
             cache: dict[str, nn.Module] | None = None) -> Tensor:
    """Fast-LPA adversarial examples in [0,1]; model in eval mode, its modes restored afterwards."""
    from advtrain.attacks._common import attack_mode  # advtrain.attacks registers this module

    with attack_mode(model):
        return _attack(model, x, y, params, cache)


def build_fast_lpa(params: FastLPAParams) -> BoundAttack:
    """Fast-LPA adversarial examples in [0,1]; model in eval mode, its modes restored afterwards.

    The attack holds its own backbone cache: an ImageNet LPIPS network is loaded once per built attack.
    """
    return BoundAttack(functools.partial(fast_lpa, cache={}), params)


def _attack(model: nn.Module, x: Tensor, y: Tensor, params: FastLPAParams,
            cache: dict[str, nn.Module] | None) -> Tensor:
    from advtrain.attacks.losses import margin_loss  # late: the attack registry imports this module

    x = x.detach().float()
    distance = build_distance(params.lpips, model, cache)
    with torch.no_grad():
        phi_x, logits = distance.features_and_logits(model, x)
        active = logits.argmax(1) == y if params.only_attack_correct else torch.ones_like(y, dtype=torch.bool)
    shape = (-1,) + (1,) * (x.dim() - 1)
    first = params.step if params.step is not None else params.bound
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    for i in range(params.steps):
        step = first * 0.1 ** (i / params.steps)
        lam = params.lam_max * 0.1 ** (1 - i / params.steps)
        x_adv = x_adv.detach().requires_grad_(True)
        phi, logits = distance.features_and_logits(model, x_adv)
        dist = (phi - phi_x).norm(dim=1)
        loss = -margin_loss(logits, y) + lam * (dist - params.bound).clamp_min(0)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            probe = (x_adv - FINITE_DIFFERENCE * direction).clamp(0, 1)
            change = ((distance.features(probe) - phi_x).norm(dim=1) - dist).abs() / FINITE_DIFFERENCE
            moved = (x_adv - direction * (step / (change + 1e-4)).view(shape)).clamp(0, 1)
            x_adv = torch.where(active.view(shape), moved, x)
    return x_adv.detach()
