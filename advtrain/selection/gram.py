"""Inner products of last-layer gradient features through their rank-one structure.

The cross-entropy gradient of one sample with respect to a linear last layer (bias b, weights W) is
∇_b = e and ∇_W = e hᵀ, with e = softmax(z) − onehot(y) (C values) and h the penultimate embedding
(H values); the features pack them as g = [e, vec(e hᵀ)], so D = C(1 + H). Written as e ⊗ ĥ with
ĥ = [1, h], ⟨g_i, g_j⟩ = (e_i·e_j)(ĥ_i·ĥ_j): a Gram block costs C + H + 1 multiply-adds per pair
instead of D = C(1 + H), ten times fewer at CIFAR-10/ResNet-18 sizes (5,130 → 523). That is where
CRAIG's distance matrices and GradMatch's pool and cross Gram blocks spend their time.

The solvers receive plain (n, D) tensors, so the structure is *detected*, not declared: for each
split D = C(1 + H) it is tested on a few rows and then verified on every row (the least-squares ĥ of
each row, and the residual of e ⊗ ĥ against the row). Features that are not rank one per sample
(TRADES' and the perceptual objectives' two-sided gradients, batch means, bias-only features,
arbitrary inputs) fail the test and the solvers take their dense path; nothing is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_PROBE_ROWS = 64


@dataclass(frozen=True)
class LastLayerFactors:
    """Rows g_i = [e_i, vec(e_i h_iᵀ)] held as ``e`` (n, C) and ``h_hat`` = [1, h] (n, H + 1)."""

    e: Tensor
    h_hat: Tensor

    def rows(self, idx: Tensor) -> LastLayerFactors:
        return LastLayerFactors(self.e[idx], self.h_hat[idx])

    def to(self, dtype: torch.dtype) -> LastLayerFactors:
        return LastLayerFactors(self.e.to(dtype), self.h_hat.to(dtype))

    def dense(self) -> Tensor:
        """The rows themselves, [e, vec(e hᵀ)], in the factors' dtype."""
        outer = self.e[:, :, None] * self.h_hat[:, None, :]
        return torch.cat([outer[:, :, 0], outer[:, :, 1:].flatten(1)], dim=1)

    def sq_norms(self) -> Tensor:
        """‖g_i‖² = ‖e_i‖²·‖ĥ_i‖²."""
        return (self.e * self.e).sum(dim=1) * (self.h_hat * self.h_hat).sum(dim=1)

    def gram(self, other: LastLayerFactors) -> Tensor:
        """⟨g_i, g'_j⟩ for every row i of ``self`` and j of ``other``, in the factors' dtype."""
        return (self.h_hat @ other.h_hat.T).mul_(self.e @ other.e.T)


def _divisors(dim: int) -> list[int]:
    """Candidate class counts C: divisors of D with H = D/C − 1 ≥ 1, smallest first."""
    return [c for c in range(2, dim // 2 + 1) if dim % c == 0]


def _fit(rows: Tensor, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares ĥ of each row for a split into C classes: (e, h, relative residual per row)."""
    e = rows[:, :classes]
    w = rows[:, classes:].reshape(len(rows), classes, -1)
    e_sq = (e * e).sum(dim=1)
    h = torch.einsum("nc,nch->nh", e, w) / e_sq.clamp_min(torch.finfo(rows.dtype).tiny)[:, None]
    resid = (w - e[:, :, None] * h[:, None, :]).flatten(1).norm(dim=1)
    scale = w.flatten(1).norm(dim=1)
    return e, h, resid / scale.clamp_min(torch.finfo(rows.dtype).tiny)


def last_layer_factors(features: Tensor, *, rtol: float = 1e-4, chunk: int = 4096) -> LastLayerFactors | None:
    """The rank-one factors of ``features`` when every row is a last-layer gradient, else ``None``.

    A row is accepted when ‖W_i − e_i h_iᵀ‖ ≤ ``rtol``·‖W_i‖ for its least-squares h_i (float32
    round-off of the product e hᵀ is ~1e-7 relative; anything structured differently misses by
    orders of magnitude). Cost: one pass over the features, O(nD); a few probe rows first make the
    answer for unstructured features O(D·#divisors).

    Returns the factors in float64 (they are D/(C + H + 1) times smaller than the features).
    """
    if features.dim() != 2 or not features.dtype.is_floating_point or len(features) == 0:
        return None
    n, dim = features.shape
    probe = features[torch.linspace(0, n - 1, min(n, _PROBE_ROWS)).long()].double()  # spread over the set
    for classes in _divisors(dim):
        _, _, err = _fit(probe, classes)
        if bool((err <= rtol).all()):
            factors = _verified(features, classes, rtol, chunk)
            if factors is not None:
                return factors
    return None


def _verified(features: Tensor, classes: int, rtol: float, chunk: int) -> LastLayerFactors | None:
    """The factors for ``classes`` if every row passes, else ``None``.

    The check runs in the features' own precision: its round-off (~1e-7 in float32) is far below
    rtol, and a float64 copy of the features would double the pass.
    """
    n, dim = features.shape
    e = torch.empty(n, classes, dtype=torch.float64, device=features.device)
    h_hat = torch.ones(n, dim // classes, dtype=torch.float64, device=features.device)
    for s in range(0, n, chunk):
        part_e, part_h, err = _fit(features[s:s + chunk], classes)
        if not bool((err <= rtol).all()):
            return None
        e[s:s + chunk] = part_e
        h_hat[s:s + chunk, 1:] = part_h
    return LastLayerFactors(e, h_hat)
