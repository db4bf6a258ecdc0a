"""Per-sample losses shared by objectives (``reduction='none'`` everywhere, so weights apply)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    """Σγℓ / Σγ — the coreset objective of Eq. (7), normalised per batch as in GradMatch/CRAIG."""
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.dtype)
    return (weights * losses).sum() / weights.sum()


def kl_per_sample(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """KL(softmax(clean) ‖ softmax(adv)) per sample, the TRADES regulariser (summed over classes)."""
    log_p = clean_logits.float().log_softmax(dim=1)
    log_q = adv_logits.float().log_softmax(dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy in fp32 (stable under bf16 autocast)."""
    return F.cross_entropy(logits.float(), y, reduction="none")
