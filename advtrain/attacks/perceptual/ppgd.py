"""Perceptual PGD (Laidlaw et al. 2021, Alg. 1): steepest ascent in the LPIPS metric, projected on its ball.

Near x', d(x', x' + δ) ≈ ‖J δ‖ with J the Jacobian of the normalised features φ. The step that
most increases the loss for a given LPIPS length s is δ ∝ (JᵀJ)⁻¹∇L, scaled so ‖J δ‖ = s. We
solve (JᵀJ)u = ∇L with a few conjugate-gradient iterations, using only products JᵀJ v: J v by a
finite difference of φ along v (normalised, so the difference stays local whatever the scale of v)
and Jᵀ(J v) by one backward pass through the graph of φ. Each step is followed by projection onto
the ball (:func:`~advtrain.attacks.perceptual.projection.project_lpips`), so every iterate is in the threat
model; evaluation keeps, per example, the worst iterate (misclassified first, then highest margin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks._common import WorstCase, attack_mode, l2_norms, per_sample_view
from advtrain.attacks.budget import STEPS
from advtrain.attacks.losses import margin_loss
from advtrain.attacks.perceptual.distance import LPIPS_NETWORKS, PerceptualDistance, build_distance
from advtrain.attacks.perceptual.projection import offer_final, project_lpips
from advtrain.attacks.threat import Threat
from advtrain.params import param

#: Length (in pixel space, along a unit direction) of the finite difference that estimates J v.
FINITE_DIFFERENCE = 1e-3
#: Below this gradient norm the margin is at its cap κ (or flat): the example is left where it is.
FLAT_GRADIENT = 1e-4


@dataclass
class PPGDParams:
    """Perceptual PGD (evaluation)."""

    bound: float = param(0.5, gt=0, help="LPIPS bound (PAT: 0.5 on CIFAR-10, 0.25 on ImageNet)")
    steps: int = STEPS.param(40, help="steps")
    step: float | None = param(None, gt=0, help="LPIPS length of each step (default 2·bound/steps)")
    cg_steps: int = STEPS.param(5, help="conjugate-gradient iterations solving (JᵀJ)u = ∇L")
    kappa: float = param(1.0, gt=0, help="margin cap: the loss stops rewarding a margin beyond κ")
    lpips: str = param("self", choices=LPIPS_NETWORKS, help="feature network of the distance")

    def threat(self) -> Threat:
        return Threat("lpips", float(self.bound))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, iterations: int) -> Tensor:
    """Approximately solve A u = b per example for a symmetric PSD operator ``apply`` (u₀ = 0).

    Batched: each example has its own step sizes. A direction with non-positive curvature (finite
    difference noise) gets no step, rather than a huge one.
    """

    def dot(a: Tensor, c: Tensor) -> Tensor:
        return (a * c).flatten(1).sum(1)

    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dot(r, r)
    for _ in range(iterations):
        ap = apply(p)
        curvature = dot(p, ap)
        alpha = torch.where(curvature > 0, rr / curvature.clamp_min(1e-30), torch.zeros_like(rr))
        u = u + per_sample_view(alpha, u) * p
        r = r - per_sample_view(alpha, r) * ap
        rr_next = dot(r, r)
        beta = torch.where(rr > 0, rr_next / rr.clamp_min(1e-30), torch.zeros_like(rr))
        p = r + per_sample_view(beta, p) * p
        rr = rr_next
    return u


def jacobian_product(distance: PerceptualDistance, point: Tensor, phi: Tensor, v: Tensor) -> Tensor:
    """J v ≈ ‖v‖·(φ(x' + h v̂) − φ(x'))/h, with φ(x') = ``phi`` already computed."""
    norms = l2_norms(v)
    unit = v / per_sample_view(norms.clamp_min(1e-30), v)
    with torch.no_grad():
        moved = distance.features(point.detach() + FINITE_DIFFERENCE * unit)
    return (moved - phi.detach()) * (norms / FINITE_DIFFERENCE).unsqueeze(1)


def perceptual_step(model: nn.Module, distance: PerceptualDistance, x_adv: Tensor, y: Tensor, length: float,
                    params: PPGDParams) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One first-order LPIPS step of length ``length`` from ``x_adv``.

    Returns (stepped point in [0,1], logits, capped margin and φ at ``x_adv``), so the caller can
    score ``x_adv`` without another forward pass.
    """
    point = x_adv.detach().requires_grad_(True)
    phi, logits = distance.features_and_logits(model, point)
    margin = margin_loss(logits, y).clamp(max=params.kappa)
    (grad,) = torch.autograd.grad(margin.sum(), point, retain_graph=True)

    def gauss_newton(v: Tensor) -> Tensor:  # JᵀJ v
        (out,) = torch.autograd.grad(phi, point, grad_outputs=jacobian_product(distance, point, phi, v),
                                     retain_graph=True)
        return out

    direction = conjugate_gradient(gauss_newton, grad.float(), params.cg_steps)
    with torch.no_grad():
        moved = jacobian_product(distance, point, phi, direction).norm(dim=1)
        scale = length / moved.clamp_min(1e-12)
        scale = torch.where(l2_norms(grad) < FLAT_GRADIENT, torch.zeros_like(scale), scale)
        stepped = (point + per_sample_view(scale, point) * direction).clamp(0, 1)
    return stepped.detach(), logits.detach(), margin.detach(), phi.detach()


def ppgd(model: nn.Module, x: Tensor, y: Tensor, params: PPGDParams, *, loss_fn: object = None,
         cache: dict[str, nn.Module] | None = None, keep_best: bool = True) -> Tensor:
    """Perceptual PGD inside the LPIPS ball of radius ``params.bound``; detached x_adv in [0,1].

    Model in eval mode during the attack (every submodule's mode restored afterwards). ``cache``
    keeps an ImageNet LPIPS backbone loaded across batches. With ``keep_best`` (evaluation) each
    example gets its worst iterate, else the last one. Every returned point is within the bound.
    """
    with attack_mode(model):
        x0 = x.detach().to(torch.float32, copy=True)
        distance = build_distance(params.lpips, model, cache)
        with torch.no_grad():
            phi_x = distance.features(x0)
        track = WorstCase(x0)
        length = params.step if params.step is not None else 2 * params.bound / params.steps
        x_adv = project_lpips(distance, x0, (x0 + 0.01 * torch.randn_like(x0)).clamp(0, 1), phi_x, params.bound)
        for _ in range(params.steps):
            stepped, logits, margin, phi = perceptual_step(model, distance, x_adv, y, length, params)
            track.offer(x_adv, logits, margin, y, valid=(phi - phi_x).norm(dim=1) <= params.bound)
            x_adv = project_lpips(distance, x0, stepped, phi_x, params.bound)
        offer_final(track, distance, model, x_adv, y, phi_x, params.bound, params.kappa)
        result = track.x if keep_best else x_adv
    return result.detach().to(x.dtype)
