"""Projection onto the LPIPS ball {x' : d(x, x') ≤ bound} ∩ [0, 1]^n.

The ball has no closed-form projection, so we follow PAT's two-stage scheme with one change that
makes the bound a guarantee rather than a tendency: Newton steps along ∇d move each point that is
over the bound down to just under it; a point still outside after ``newton_steps`` falls back to
bisection on the segment from x to its original position, and bisection returns the *feasible*
end of its bracket (PAT returns the midpoint, which can sit slightly outside). Every point this
returns has been measured within the bound, or is x itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks._common import WorstCase, per_sample_view
from advtrain.attacks.losses import margin_loss
from advtrain.attacks.perceptual.distance import PerceptualDistance

#: Newton aims this fraction below the bound, so that one step usually lands inside despite curvature.
UNDERSHOOT = 0.01


def lpips_distances(distance: PerceptualDistance, phi_x: Tensor, x_adv: Tensor) -> Tensor:
    """d(x, x_adv) per example, from cached φ(x)."""
    with torch.no_grad():
        return (distance.features(x_adv) - phi_x).norm(dim=1)


def project_lpips(distance: PerceptualDistance, x: Tensor, x_adv: Tensor, phi_x: Tensor, bound: float, *,
                  newton_steps: int = 10, bisection_steps: int = 10) -> Tensor:
    """Move every example of ``x_adv`` farther than ``bound`` from ``x`` back inside the LPIPS ball.

    Examples already inside are returned unchanged. ``phi_x`` is φ(x), cached by the caller.
    """
    x_adv = x_adv.detach().clone()
    over = lpips_distances(distance, phi_x, x_adv) > bound
    if not over.any():
        return x_adv
    start = x_adv.clone()
    target = bound * (1 - UNDERSHOOT)
    for _ in range(newton_steps):
        idx = over.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        point = x_adv[idx].requires_grad_(True)
        dist = (distance.features(point) - phi_x[idx]).norm(dim=1)
        (grad,) = torch.autograd.grad(dist.sum(), point)
        with torch.no_grad():
            squared = grad.flatten(1).pow(2).sum(1).clamp_min(1e-20)
            step = (dist - target).clamp_min(0) / squared  # Newton on d(x') = target along ∇d
            moved = (point - per_sample_view(step, point) * grad).clamp(0, 1)
            x_adv[idx] = moved
            over[idx] = lpips_distances(distance, phi_x[idx], moved) > bound
    if over.any():
        idx = over.nonzero().squeeze(1)
        x_adv[idx] = _bisect(distance, x[idx], start[idx], phi_x[idx], bound, bisection_steps)
    return x_adv


def _bisect(distance: PerceptualDistance, x: Tensor, far: Tensor, phi_x: Tensor, bound: float,
            steps: int) -> Tensor:
    """The farthest point measured inside the ball on the segment x → ``far`` (x itself at worst)."""
    low = torch.zeros(x.shape[0], device=x.device)
    high = torch.ones(x.shape[0], device=x.device)
    for _ in range(steps):
        mid = (low + high) / 2
        inside = lpips_distances(distance, phi_x, x + per_sample_view(mid, x) * (far - x)) <= bound
        low = torch.where(inside, mid, low)
        high = torch.where(inside, high, mid)
    return x + per_sample_view(low, x) * (far - x)


def offer_final(track: WorstCase, distance: PerceptualDistance, model: nn.Module, x_adv: Tensor, y: Tensor,
                phi_x: Tensor, bound: float, kappa: float) -> None:
    """Score the attack's last point and offer it to ``track`` where it lies inside the ball."""
    with torch.no_grad():
        phi, logits = distance.features_and_logits(model, x_adv)
    track.offer(x_adv, logits, margin_loss(logits, y).clamp(max=kappa), y, valid=(phi - phi_x).norm(dim=1) <= bound)
