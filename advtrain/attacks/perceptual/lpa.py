"""Lagrangian Perceptual Attack (Laidlaw et al. 2021, Alg. 2): the strongest PAT evaluation attack.

Minimises −min(margin, κ) + λ·max(0, d(x, x') − bound) with normalised-gradient steps whose
LPIPS length decays from ``step`` to ``step``/10 (the change of d along the direction is a finite
difference). λ starts small and is multiplied by 10 after each round for the examples that are
still over the bound; an example stops moving once it is misclassified inside the bound. The
final point is projected onto the ball (:func:`~advtrain.attacks.perceptual.projection.project_lpips`), and
evaluation keeps, per example, the worst point seen *inside* the ball, so the bound always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks._common import WorstCase, attack_mode, l2_norms, per_sample_view
from advtrain.attacks.budget import ROUNDS, STEPS
from advtrain.attacks.losses import margin_loss
from advtrain.attacks.perceptual.distance import LPIPS_NETWORKS, build_distance
from advtrain.attacks.perceptual.projection import offer_final, project_lpips
from advtrain.attacks.threat import Threat
from advtrain.params import param

#: Length of the finite difference that measures how fast d changes along the step direction.
FINITE_DIFFERENCE = 0.1


@dataclass
class LPAParams:
    """Lagrangian perceptual attack (evaluation)."""

    bound: float = param(0.5, gt=0, help="LPIPS bound (PAT: 0.5 on CIFAR-10, 0.25 on ImageNet)")
    steps: int = STEPS.param(40, help="gradient steps per λ round")
    rounds: int = ROUNDS.param(5, help="λ rounds: λ ×10 after each for examples still over the bound")
    step: float | None = param(None, gt=0, help="first LPIPS step length (default: the bound), decays ×0.1")
    lam: float = param(0.01, gt=0, help="initial Lagrange multiplier")
    kappa: float = param(1.0, gt=0, help="margin cap: the loss stops rewarding a margin beyond κ")
    lpips: str = param("self", choices=LPIPS_NETWORKS, help="feature network of the distance")

    def threat(self) -> Threat:
        return Threat("lpips", float(self.bound))


def lpa(model: nn.Module, x: Tensor, y: Tensor, params: LPAParams, *, loss_fn: object = None,
        cache: dict[str, nn.Module] | None = None, keep_best: bool = True) -> Tensor:
    """LPA adversarial examples within LPIPS ``params.bound`` of ``x``; detached, in [0,1].

    Model in eval mode during the attack (modes restored afterwards); ``cache`` keeps an ImageNet
    LPIPS backbone across batches. ``keep_best`` returns each example's worst in-bound point,
    otherwise the projected last iterate.
    """
    with attack_mode(model):
        x0 = x.detach().to(torch.float32, copy=True)
        distance = build_distance(params.lpips, model, cache)
        with torch.no_grad():
            phi_x = distance.features(x0)
        track = WorstCase(x0)
        first = params.step if params.step is not None else params.bound
        x_adv = (x0 + 0.01 * torch.randn_like(x0)).clamp(0, 1)
        lam = torch.full((x0.shape[0],), params.lam, device=x0.device)
        live = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        last_dist = torch.zeros(x0.shape[0], device=x0.device)
        for _ in range(params.rounds):
            for i in range(params.steps):
                idx = live.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                point = x_adv[idx].requires_grad_(True)
                phi, logits = distance.features_and_logits(model, point)
                dist = (phi - phi_x[idx]).norm(dim=1)
                margin = margin_loss(logits, y[idx]).clamp(max=params.kappa)
                loss = -margin + lam[idx] * (dist - params.bound).clamp_min(0)
                (grad,) = torch.autograd.grad(loss.sum(), point)
                with torch.no_grad():
                    inside = dist <= params.bound
                    track.offer(point, logits, margin, y[idx], valid=inside, index=idx)
                    unit = grad / per_sample_view(l2_norms(grad).clamp_min(1e-12), grad)
                    probe = distance.features((point - FINITE_DIFFERENCE * unit).clamp(0, 1))
                    rate = (probe - phi).norm(dim=1) / FINITE_DIFFERENCE
                    length = first * 0.1 ** (i / params.steps)
                    x_adv[idx] = (point - unit * per_sample_view(length / (rate + 1e-8), unit)).clamp(0, 1)
                    last_dist[idx] = dist
                    fooled = logits.argmax(1) != y[idx]
                    live[idx] = ~(fooled & inside)
            lam = torch.where(live & (last_dist > params.bound), lam * 10, lam)
            if not live.any():
                break
        x_adv = project_lpips(distance, x0, x_adv, phi_x, params.bound)
        offer_final(track, distance, model, x_adv, y, phi_x, params.bound, params.kappa)
        result = track.x if keep_best else x_adv
    return result.detach().to(x.dtype)
