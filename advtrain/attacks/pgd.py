"""Projected gradient descent (Madry et al. 2018) in the ℓ∞ and ℓ2 threat models.

The same function serves training (last iterate, every example keeps being updated even once it
is misclassified, as adversarial training needs the loss maximiser) and evaluation
(``keep_best=True``: per example the worst point seen over all steps and restarts).

Randomness (the random starts) comes from the global torch RNG, which the training loop seeds per
epoch, or from ``generator`` when one is given (it must live on the inputs' device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks._common import WorstCase, ascent_step, attack_mode, l2_norms, per_sample_view, project
from advtrain.attacks.bound import BoundAttack
from advtrain.attacks.budget import RESTARTS, STEPS
from advtrain.attacks.losses import LOSSES, LossFn, check_per_sample
from advtrain.attacks.threat import Threat
from advtrain.params import param


@dataclass
class BallParams:
    """An iterative attack in an ℓp ball: ε-ball, step size and steps (what PGD and TRADES' KL attack share)."""

    norm: str = param("linf", choices=("linf", "l2"), help="threat model: ℓ∞ or ℓ2 ball")
    eps: float = param(8 / 255, ge=0, le=1000, help="radius of the ball in [0,1] pixel units (ℓ2: e.g. 0.5)")
    alpha: float = param(2 / 255, ge=0, le=1000, help="step size (ℓ∞: per pixel, on the sign; ℓ2: step length)")
    steps: int = STEPS.param(10, low=0, help="number of gradient steps")

    def threat(self) -> Threat:
        return Threat(self.norm, float(self.eps))


@dataclass
class PGDParams(BallParams):
    """PGD attack: ε-ball, step size, steps, random start and restarts."""

    random_start: bool = param(True, help="start from a uniformly random point of the ball")
    restarts: int = RESTARTS.param(1, help="independent runs; each example keeps its worst case")
    loss: str = param("ce", choices=("ce", "margin"), help="loss maximised: cross-entropy or CW margin")


def random_init(x: Tensor, norm: str, eps: float, generator: torch.Generator | None = None, *,
                l2_radius: str = "volume") -> Tensor:
    """A point drawn uniformly from the ``norm`` ball of radius ``eps`` around ``x``, then put in [0, 1].

    ℓ∞: δ ~ U[−ε, ε] per pixel. ℓ2: a Gaussian direction scaled to radius ε·U^(1/d), which is
    uniform *inside* the ball (d = pixels per image), not on its surface. Clipping to [0, 1]
    afterwards only shrinks δ, so the point stays in the ball. ``l2_radius="uniform"`` draws the
    radius as ε·U instead (torchattacks' PGDL2): uniform in volume puts almost every start at the
    edge in high dimension (d = 64: median radius 0.99·ε), which measurably weakens evaluation PGD.
    """
    x = x.float()
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        delta = (2.0 * u - 1.0) * eps
    elif norm == "l2":
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        norms = l2_norms(direction)
        direction = direction / per_sample_view(torch.where(norms > 0, norms, torch.ones_like(norms)), x)
        d = x[0].numel()
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float32)
        radius = eps * (u if l2_radius == "uniform" else u.pow(1.0 / d))
        delta = direction * per_sample_view(radius, x)
    else:
        raise ValueError(f"unknown norm '{norm}' (expected linf or l2)")
    return project(x + delta, x, norm, eps)


def _single_run(model: nn.Module, x: Tensor, y: Tensor, params: PGDParams, loss_fn: LossFn,
                generator: torch.Generator | None, track: WorstCase | None, l2_radius: str) -> Tensor:
    """One PGD run from one start; offers each iterate to ``track`` when given."""
    x_adv = random_init(x, params.norm, params.eps, generator, l2_radius=l2_radius) if params.random_start \
        else x.clone()
    for _ in range(params.steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        loss = loss_fn(logits, y)
        check_per_sample(loss, x.shape[0])
        # Gradient w.r.t. the input only: nothing accumulates in the parameters' .grad.
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = x_adv.detach()
        if track is not None:
            track.offer(x_adv, logits.detach(), loss.detach(), y)
        stepped = ascent_step(x_adv, grad.float(), params.norm, params.alpha)
        x_adv = project(stepped, x, params.norm, params.eps)
    return x_adv


def pgd(model: nn.Module, x: Tensor, y: Tensor, params: PGDParams, *, loss_fn: LossFn | None = None,
        generator: torch.Generator | None = None, keep_best: bool = False, l2_radius: str = "volume") -> Tensor:
    """PGD in the ℓ∞ or ℓ2 ball around ``x`` (images in [0, 1]); returns detached ``x_adv``.

    Runs ``model`` in eval mode (the previous mode of every submodule is restored afterwards,
    also on errors) and takes gradients w.r.t. the input only. Perturbation arithmetic is fp32,
    so an outer bf16 autocast only affects the forward passes.

    With ``restarts > 1`` each example keeps its worst final iterate across restarts: a
    misclassified point beats a correctly classified one, and among equals the higher loss wins.
    With ``keep_best=True`` (evaluation) the same rule also runs over every iterate of every run,
    so a point that was fooled at some step is never reported as robust because a later step
    undid it. Training should keep ``keep_best=False``: the last iterate, updated at every step.

    Args:
        model: maps [0, 1] images to logits (normalisation inside the model).
        x: clean images, N×C×H×W in [0, 1].
        y: labels, shape (N,).
        params: ball, step size, steps, random start, restarts, loss.
        loss_fn: per-sample loss ``(logits, y) -> (N,)`` to maximise; defaults to ``params.loss``.
        generator: RNG for the random starts (default: the global torch RNG).
        keep_best: return the worst iterate seen instead of the last one.
        l2_radius: ℓ2 random start radius, ``volume`` (uniform in the ball) or ``uniform`` (ε·U, the
            evaluation presets' choice; see :func:`random_init`).
    """
    loss_fn = loss_fn or LOSSES[params.loss]
    with attack_mode(model):
        # Copies: inputs may be inference tensors, and must never be modified.
        x0 = x.detach().to(torch.float32, copy=True)
        y0 = y.detach().clone()
        track = WorstCase(x0) if keep_best or params.restarts > 1 else None
        x_adv = x0
        for _ in range(params.restarts):
            x_adv = _single_run(model, x0, y0, params, loss_fn, generator, track if keep_best else None, l2_radius)
            if track is not None:
                with torch.no_grad():
                    logits = model(x_adv)
                    loss = loss_fn(logits, y0)
                check_per_sample(loss, x0.shape[0])
                track.offer(x_adv, logits, loss, y0)
        result = track.x if track is not None else x_adv
    return result.detach().to(x.dtype)


def build_pgd(params: PGDParams) -> BoundAttack:
    """PGD in the ℓ∞ or ℓ2 ball around ``x`` (images in [0, 1]); returns detached ``x_adv``."""
    return BoundAttack(pgd, params)
