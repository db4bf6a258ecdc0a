"""StAdv: spatially transformed adversarial examples (Xiao et al. 2018), as PAT evaluates it.

An unseen threat model for ℓp-trained models: instead of changing pixel values, every pixel is
resampled from a slightly displaced position. The displacement field ("flow") lives in
``grid_sample``'s normalised [−1, 1] coordinates, is bounded by ``bound`` per component (ℓ∞) and
is kept smooth by a penalty, so the attack bends edges rather than adding noise.

Following PAT (Laidlaw et al. 2021) the flow is optimised with Adam from zero, maximising the CW
margin minus ``(smoothness / bound)`` times the stAdv flow loss, and is projected back to the
bound after every step. :func:`adam_attack` is that optimisation scheme, shared with
:mod:`advtrain.attacks.recolor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks._common import WorstCase, attack_mode
from advtrain.attacks.budget import STEPS
from advtrain.attacks.losses import LossFn, check_per_sample, margin_loss
from advtrain.attacks.threat import Threat
from advtrain.params import param

SMOOTHNESS_EPS = 1e-10


@dataclass
class StAdvParams:
    """StAdv (evaluation): flow bound, Adam steps and step size, smoothness penalty."""

    bound: float = param(0.05, gt=0, help="ℓ∞ bound on each flow component, in grid_sample's [-1,1] coordinates")
    steps: int = STEPS.param(100, help="Adam steps")
    lr: float = param(0.01, gt=0, help="Adam step size")
    smoothness: float = param(0.0025, ge=0, help="flow-smoothness penalty; its weight is smoothness/bound")

    def threat(self) -> Threat:
        return Threat("flow", float(self.bound))


def identity_grid(x: Tensor) -> Tensor:
    """The sampling grid that reproduces ``x`` (N×C×H×W), shape (N, H, W, 2) in [−1, 1]."""
    n, _, h, w = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float32
    theta = torch.eye(2, 3, dtype=dtype, device=x.device).expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, h, w], align_corners=True)


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Resample ``x`` at ``identity + flow`` (bilinear, border padding), clamped to [0, 1].

    ``align_corners=True`` puts the grid's ±1 on the corner pixels' centres, so zero flow samples
    on pixel centres and reproduces ``x``. The sampling runs in float64 because in fp32 the
    coordinate arithmetic misses the centres by enough to change pixels by up to ~3e-5 at 224×224;
    it is cheap next to the model. The result has the promoted dtype of ``x`` and ``flow``.
    """
    dtype = torch.promote_types(x.dtype, flow.dtype)
    x64 = x.to(torch.float64)
    grid = identity_grid(x64) + flow.to(torch.float64)
    out = F.grid_sample(x64, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.clamp(0.0, 1.0).to(dtype)


def flow_smoothness(flow: Tensor) -> Tensor:
    """The stAdv flow loss per example, shape (N,), for a flow of shape (N, H, W, 2).

    Sums sqrt(‖f(q) − f(p)‖² + ε) over every pixel p and its 4 neighbours q, the image border
    replicating the pixel itself (so each interior edge counts twice, once from each side). The ε
    keeps the gradient finite where neighbouring flows agree, e.g. at the zero start. Computed as
    twice the sum over the edges plus the constant sqrt(ε) of each replicated border neighbour.
    """
    _, h, w, _ = flow.shape
    total = flow.new_zeros(flow.shape[0])
    for axis, n in ((1, h), (2, w)):
        step = flow.narrow(axis, 1, n - 1) - flow.narrow(axis, 0, n - 1)
        edges = (step.pow(2).sum(dim=3) + SMOOTHNESS_EPS).sqrt().flatten(1).sum(dim=1)
        total = total + 2 * edges + 2 * (h * w // n) * SMOOTHNESS_EPS**0.5
    return total


def project_flow(flow: Tensor, grid: Tensor, bound: float) -> Tensor:
    """Clamp each flow component to [−bound, bound] and keep ``grid + flow`` inside [−1, 1].

    Both constraints are boxes containing zero, so clamping to their intersection is the projection.
    """
    lo = torch.clamp(-1.0 - grid, min=-bound)
    hi = torch.clamp(1.0 - grid, max=bound)
    return torch.maximum(torch.minimum(flow, hi), lo)


def adam_attack(model: nn.Module, y: Tensor, init: Tensor, render: Callable[[Tensor], Tensor],
                penalty: Callable[[Tensor], Tensor], project: Callable[[Tensor], Tensor], *, steps: int,
                lr: float, loss_fn: LossFn, keep_best: bool) -> Tensor:
    """Maximise ``loss_fn(model(render(p)), y) − penalty(p)`` over parameters ``p`` with projected Adam.

    The caller holds ``attack_mode``. Losses are per example and summed, and Adam is element-wise,
    so examples stay independent of each other. With ``keep_best`` every iterate (the start
    included, then each projected point) is offered to a worst-case tracker on ``loss_fn``, so the
    returned ``p`` is per example the worst point seen, not the last; otherwise the last iterate.
    Gradients are taken w.r.t. ``p`` only: nothing accumulates in the model's ``.grad``.

    Returns:
        The chosen parameters, detached, same shape as ``init``.
    """
    p = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([p], lr=lr)
    track = WorstCase(p.detach()) if keep_best else None
    for _ in range(steps):
        logits = model(render(p))
        loss = loss_fn(logits, y)
        check_per_sample(loss, y.shape[0])
        if track is not None:
            track.offer(p.detach(), logits.detach(), loss.detach(), y)
        (grad,) = torch.autograd.grad((penalty(p) - loss).sum(), p)
        p.grad = grad
        optimizer.step()
        with torch.no_grad():
            p.copy_(project(p))
    if track is None:
        return p.detach()
    with torch.no_grad():
        logits = model(render(p))
        loss = loss_fn(logits, y)
    track.offer(p.detach(), logits, loss, y)
    return track.x


def stadv(model: nn.Module, x: Tensor, y: Tensor, params: StAdvParams, *, keep_best: bool = True,
          return_flow: bool = False, loss_fn: LossFn | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """StAdv adversarial examples for [0, 1] images ``x`` (N×C×H×W) with labels ``y``.

    Runs ``model`` in eval mode (every submodule's flag restored afterwards). The flow starts at
    zero and is fp32; Adam minimises ``−loss + (smoothness/bound)·flow_smoothness`` and each step is
    projected onto the bound. ``keep_best`` (evaluation) returns per example the worst iterate:
    misclassified first, then the highest loss; since the zero start is offered too, the result is
    never less adversarial than the unwarped image.

    Args:
        model: maps [0, 1] images to logits.
        x: clean images in [0, 1].
        y: labels, shape (N,).
        params: bound, steps, Adam step size, smoothness.
        keep_best: return the worst iterate seen instead of the last one.
        return_flow: also return the flow, (N, H, W, 2), with ``x_adv == warp(x, flow)``.
        loss_fn: per-sample loss to maximise and to rank iterates by; defaults to the CW margin.

    Returns:
        Detached ``x_adv`` in ``x``'s dtype, or ``(x_adv, flow)``.
    """
    loss_fn = loss_fn or margin_loss
    weight = params.smoothness / params.bound
    with attack_mode(model):
        x0 = x.detach().to(torch.float32, copy=True)
        y0 = y.detach().clone()
        grid = identity_grid(x0)
        flow = adam_attack(
            model, y0, torch.zeros_like(grid),
            render=lambda f: warp(x0, f),
            penalty=lambda f: weight * flow_smoothness(f),
            project=lambda f: project_flow(f, grid, params.bound),
            steps=params.steps, lr=params.lr, loss_fn=loss_fn, keep_best=keep_best,
        )
        with torch.no_grad():
            x_adv = warp(x0, flow).to(x.dtype)
    return (x_adv, flow) if return_flow else x_adv


__all__ = ["StAdvParams", "adam_attack", "flow_smoothness", "identity_grid", "project_flow", "stadv", "warp"]
