"""Shared mechanics of the attacks: model mode, grad mode, the ascent step and the two projections.

Kept separate from the attacks so that every attack enforces the same contract in the same way:
eval mode restored exactly afterwards, gradients taken w.r.t. the input only, results inside
[0, 1] and the ε-ball.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from advtrain.runtime.modes import eval_mode


@contextmanager
def input_grad_only(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the block, then get their own flags back.

    An attack differentiates w.r.t. the input only. Eager autograd already skips the weight
    gradients, but a ``torch.compile``d model traces one backward for every input that requires
    a gradient: without this, each attack step would also compute all weight gradients.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, input gradients only, autograd on even inside a ``no_grad``/``inference_mode`` block."""
    with eval_mode(model), input_grad_only(model), torch.inference_mode(False), torch.enable_grad():
        yield


def per_sample_view(values: Tensor, like: Tensor) -> Tensor:
    """Reshape ``(N,)`` to ``(N, 1, 1, ...)`` so it broadcasts against ``like``."""
    return values.view(-1, *[1] * (like.dim() - 1))


def l2_norms(t: Tensor) -> Tensor:
    """Per-sample ℓ2 norms, shape ``(N,)``."""
    return t.flatten(1).norm(p=2, dim=1)


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Clip the perturbation to ``[-eps, eps]`` per pixel, then the image to ``[0, 1]``."""
    delta = (x_adv - x).clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0)


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Shrink the perturbation onto the ℓ2 ball of radius ``eps``, then clip to ``[0, 1]``.

    Clipping to the box after the ball never leaves the ball: since ``x`` lies in ``[0, 1]``,
    clipping only moves coordinates of ``x + δ`` towards ``x``.
    """
    delta = x_adv - x
    norms = l2_norms(delta)
    scale = torch.where(norms > eps, eps / torch.where(norms > 0, norms, torch.ones_like(norms)),
                        torch.ones_like(norms))
    return (x + delta * per_sample_view(scale, delta)).clamp(0.0, 1.0)


def project(x_adv: Tensor, x: Tensor, norm: str, eps: float) -> Tensor:
    """Project onto the ``norm`` ball of radius ``eps`` around ``x`` intersected with ``[0, 1]``."""
    if norm == "linf":
        return project_linf(x_adv, x, eps)
    if norm == "l2":
        return project_l2(x_adv, x, eps)
    raise ValueError(f"unknown norm '{norm}' (expected linf or l2)")


def ascent_step(x_adv: Tensor, grad: Tensor, norm: str, alpha: float) -> Tensor:
    """One steepest-ascent step: α·sign(g) for ℓ∞, α·g/‖g‖₂ for ℓ2 (no step where g = 0)."""
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    norms = l2_norms(grad)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return x_adv + alpha * grad / per_sample_view(safe, grad)


class WorstCase:
    """Per example, the worst point offered so far: misclassified first, then highest loss.

    Every evaluation attack keeps its answer this way, so a point fooled at some step is never
    reported as robust because a later step undid it.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x.clone()
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), float("-inf"), device=x.device)

    def offer(self, x: Tensor, logits: Tensor, loss: Tensor, y: Tensor, valid: Tensor | None = None,
              index: Tensor | None = None) -> None:
        """Keep ``x`` where it beats the current point.

        ``valid`` masks out points outside the threat model; ``index`` says which examples the rows
        of ``x`` are, for attacks that only keep working on part of the batch (``y`` matches ``x``).
        """
        rows = slice(None) if index is None else index
        fooled = logits.argmax(dim=1) != y
        loss = loss.detach().float()
        held_fooled, held_loss = self.fooled[rows], self.loss[rows]
        better = (fooled & ~held_fooled) | ((fooled == held_fooled) & (loss > held_loss))
        if valid is not None:
            better &= valid
        self.x[rows] = torch.where(per_sample_view(better, x), x.detach(), self.x[rows])
        self.fooled[rows] = torch.where(better, fooled, held_fooled)
        self.loss[rows] = torch.where(better, loss, held_loss)
