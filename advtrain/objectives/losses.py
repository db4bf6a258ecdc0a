"""The coreset-weighted batch mean of per-sample losses (the losses themselves: advtrain.attacks.losses)."""

from __future__ import annotations

from torch import Tensor


def weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    """Σγℓ / Σγ — the coreset objective of Eq. (7), normalised per batch as in GradMatch/CRAIG."""
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.dtype)
    return (weights * losses).sum() / weights.sum()
