"""Shared numerics of the two GradMatch solvers: the span test, the memory refusal, and Cholesky factors
stored for LAPACK (column-major), solved and shrunk by one row and column in O(k²)."""

from __future__ import annotations

import torch
from torch import Tensor

# An atom whose squared distance to the span of the support is at most this fraction of its squared
# norm lies in that span (adds nothing to the fit); shared by both OMPs' pivots and the riders.
_SPAN_RTOL = 1e-10


class FactorTooLarge(MemoryError):
    """A GradMatch solver's factor and rows would exceed its memory bound; raised before any copy.

    Plain numbers, no recipe vocabulary: the selector that called the solver says which settings
    would fit (the math does not know it was configured from a recipe).
    """

    def __init__(self, solver: str, candidates: int, budget: int, side: int, need_bytes: int, ridge: bool) -> None:
        self.solver, self.candidates, self.budget = solver, candidates, budget
        self.side, self.need_bytes, self.ridge = side, need_bytes, ridge
        super().__init__(f"{solver} GradMatch over {candidates} candidates with a budget of {budget} needs a "
                         f"{side}×{side} float64 factor and {side} float64 rows ({need_bytes / 2**30:.1f} GiB)")


def _lower(k: int, device: torch.device) -> Tensor:
    """A zero k×k float64 matrix stored column-major, the layout LAPACK's triangular solves read in place.

    torch copies any other operand (a row-major factor, or a slice of a larger buffer) on every
    call, which made each solve 10–50× slower at k in the thousands.
    """
    return torch.zeros(k, k, dtype=torch.float64, device=device).T


def _cholesky_solve(low: Tensor, rhs: Tensor) -> Tensor:
    """x with L Lᵀ x = rhs for a lower-triangular L (column-major, see :func:`_lower`)."""
    y = torch.linalg.solve_triangular(low, rhs[:, None], upper=False)
    return torch.linalg.solve_triangular(low.T, y, upper=True)[:, 0]


def _delete_factor_row(factor: Tensor, q: int) -> Tensor:
    """The k×k lower Cholesky factor without row and column ``q`` (O(k²), Givens-style rank-one update).

    With L = [[L11, 0, 0], [l21ᵀ, l22, 0], [L31, l32, L33]], the factor without atom q is
    [[L11, 0], [L31, L33′]] where L33′L33′ᵀ = L33L33ᵀ + l32l32ᵀ: a rank-one Cholesky update.
    """
    k = len(factor)
    x = factor[q + 1:, q].clone()
    tail = factor[q + 1:, q + 1:].clone()
    for i in range(k - q - 1):
        d = float(tail[i, i])
        r = (d * d + float(x[i]) ** 2) ** 0.5
        c, s = r / d, float(x[i]) / d
        tail[i, i] = r
        if i + 1 < len(x):
            col = (tail[i + 1:, i] + s * x[i + 1:]) / c
            x[i + 1:] = c * x[i + 1:] - s * col
            tail[i + 1:, i] = col
    out = _lower(k - 1, factor.device)
    out[:q, :q] = factor[:q, :q]
    out[q:, :q] = factor[q + 1:, :q]
    out[q:, q:] = tail
    return out
