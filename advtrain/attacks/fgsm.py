"""FGSM with a random start (FGSM-RS, Wong et al. 2020, "Fast is better than free").

δ ~ U[−ε, ε], ``x + δ`` clipped to [0, 1], one signed step of α (Fast-AT uses α = 1.25·ε),
projection onto the ε-ball, clip to [0, 1]. Without a random start it is Goodfellow's plain FGSM,
one step of exactly ε. It is one-step ℓ∞ PGD, so it runs through :func:`pgd` (same contract: eval
mode restored, input gradients only, global torch RNG or ``generator`` for the start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.losses import LossFn
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.attacks.threat import Threat
from advtrain.params import param


@dataclass
class FGSMParams:
    """FGSM / FGSM-RS (Fast-AT): one signed gradient step from a random start."""

    eps: float = param(8 / 255, ge=0, le=1, help="ℓ∞ radius in [0,1] pixel units")
    alpha: float = param(10 / 255, ge=0, le=1, help="step size (Fast-AT: 1.25·ε); without random start the "
                                              "step is ε and alpha is not used")
    random_start: bool = param(True, help="FGSM-RS: start uniformly in the ε-ball (needed against "
                                          "catastrophic overfitting)")
    norm: str = param("linf", choices=("linf",), help="threat model (ℓ∞ only)")

    def threat(self) -> Threat:
        return Threat("linf", float(self.eps))


def fgsm(model: nn.Module, x: Tensor, y: Tensor, params: FGSMParams, *, loss_fn: LossFn | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    """FGSM-RS (Fast-AT) one-step ℓ∞ attack; plain FGSM with step ε when ``random_start`` is off."""
    step = params.alpha if params.random_start else params.eps
    one_step = PGDParams(norm="linf", eps=params.eps, alpha=step, steps=1,
                         random_start=params.random_start, restarts=1, loss="ce")
    return pgd(model, x, y, one_step, loss_fn=loss_fn, generator=generator)


def build_fgsm(params: FGSMParams) -> BoundAttack:
    """FGSM-RS (Fast-AT) one-step ℓ∞ attack; plain FGSM with step ε when ``random_start`` is off."""
    return BoundAttack(fgsm, params)
