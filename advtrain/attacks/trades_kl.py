"""TRADES' inner maximisation (Zhang et al. 2019): the point of the ε-ball farthest from x in KL.

``x'`` starts at ``x + 0.001·N(0, I)`` and climbs KL(f(x) ‖ f(x')) for ``steps`` steps with the
shared ascent step and projection (ℓ∞: α·sign(g); ℓ2: α·g/‖g‖₂), model in eval mode. It needs no
label: it moves away from the model's own clean prediction, which is what TRADES' regulariser
measures. There is no random start in the ball, no restart and no choice of loss: a TRADES recipe
names the ball and the budget only (``attack: {name: pgd, norm, eps, alpha, steps}`` as TRADES'
reference code does, or the same keys under ``name: trades_kl``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks._common import ascent_step, attack_mode, project
from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.losses import kl_per_sample
from advtrain.attacks.pgd import BallParams

#: Standard deviation of the start around ``x`` (TRADES' reference code).
START_NOISE = 0.001


@dataclass
class TradesKLParams(BallParams):
    """TRADES' KL attack: ε-ball, step size and steps."""


def trades_kl(model: nn.Module, x: Tensor, y: Tensor, params: TradesKLParams, *,
              generator: torch.Generator | None = None) -> Tensor:
    """TRADES' KL maximiser in the ball around ``x`` (images in [0, 1]); returns detached ``x_adv``.

    ``y`` is not used (the signature is every training attack's). The clean logits are taken in
    eval mode like every step; the start noise comes from the global torch RNG, or ``generator``.
    """
    with attack_mode(model):
        x0 = x.detach().clone()
        with torch.no_grad():
            clean_logits = model(x0)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_adv = project(x0 + START_NOISE * noise, x0, params.norm, params.eps)
        for _ in range(params.steps):
            x_adv.requires_grad_(True)
            loss = kl_per_sample(clean_logits, model(x_adv))
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = project(ascent_step(x_adv.detach(), grad, params.norm, params.alpha), x0, params.norm,
                            params.eps)
    return x_adv.detach()


def build_trades_kl(params: TradesKLParams) -> BoundAttack:
    """TRADES' inner maximisation: KL(f(x) ‖ f(x')) from x + 0.001·N(0, I), no label, no restarts."""
    return BoundAttack(trades_kl, params)
