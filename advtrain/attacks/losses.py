"""Per-sample losses that attacks maximise and objectives train on (their one home).

Each returns one value per example (shape ``(N,)``) computed in fp32, so a bf16 autocast forward
pass does not coarsen the quantity the attack climbs, so restarts can compare examples one by one,
and so coreset weights can apply per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``-log softmax(z)_y`` in fp32."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` in fp32 (positive ⇔ misclassified).

    Unlike cross-entropy it does not saturate when the softmax is confident, so its gradient does
    not vanish in fp32 on over-confident (gradient-masking) models.
    """
    z = logits.float()
    true = z.gather(1, y.view(-1, 1)).squeeze(1)
    is_true = F.one_hot(y, num_classes=z.shape[1]).bool()
    other = z.masked_fill(is_true, float("-inf")).amax(dim=1)
    return other - true


def kl_per_sample(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) per sample in fp32: TRADES' regulariser and its attack's loss."""
    log_p = clean_logits.float().log_softmax(dim=1)
    log_q = adv_logits.float().log_softmax(dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin_loss}


def check_per_sample(loss: Tensor, n: int) -> None:
    """Fail loudly when a ``loss_fn`` reduced over the batch (a silent bug for restarts)."""
    if loss.shape != (n,):
        raise ValueError(f"an attack loss_fn must return per-sample losses of shape ({n},), got "
                         f"{tuple(loss.shape)}; use reduction='none'")


__all__ = ["LOSSES", "LossFn", "check_per_sample", "cross_entropy", "kl_per_sample", "margin_loss"]
