"""Exact OMP: GradMatch's reference solver, one atom per round (Killamsetty et al. 2021).

Match the full gradient sum b with non-negative weights on at most k atoms,
min ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖²: one atom per round, incremental Cholesky, pruning of negative
weights. O(k) passes over the candidates and a k×k factor; :mod:`.omp_batch` is the fast path the
tests compare with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advtrain.selection.solvers.cholesky import _SPAN_RTOL, FactorTooLarge, _cholesky_solve, _delete_factor_row, _lower


def orthogonal_matching_pursuit(features: Tensor, budget: int, *, lam: float = 0.0, target: Tensor | None = None,
                                nonnegative: bool = True, tol: float = 1e-6,
                                max_gram_bytes: int = 2 * 2**30) -> tuple[Tensor, Tensor]:
    """GradMatch, exact reference: one atom per round, (non-negative) ridge least squares refit.

    Minimises ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖² greedily, b = Σ_i g_i by default. Each round adds the
    atom outside the support most correlated with the residual (largest ⟨g_j, r⟩; largest
    |⟨g_j, r⟩| when ``nonnegative`` is off) and refits w on the support through an incrementally
    grown Cholesky factor of the normal equations (O(k²) per atom; the selected rows are kept in a
    buffer, so an add never gathers them again). An atom (numerically) in the span of the support
    adds nothing and is skipped until the support loses an atom. Non-negativity is kept by pruning:
    while some weight is negative, the most negative atom is dropped (its row and column leave the
    factor by a rank-one update, O(k²)) and w refitted. Only an atom pruned right after being added
    is banned for good; an older pruned atom may come back when it correlates again (banning every
    pruned atom made the match up to 1.9× worse at large budgets). A round cap guarantees
    termination. Stops at ``budget`` atoms, when no atom correlates positively with the residual, or
    when ‖r‖ ≤ tol·‖b‖. Correlations run in the features' dtype, the solve in float64.

    This is the reference for :func:`batch_omp` (tests compare both); its memory grows as k² + kD,
    and budgets beyond ``max_gram_bytes`` raise :class:`FactorTooLarge` before anything is copied.

    Returns:
        ``(indices, weights)`` of the selected atoms, all weights > 0 when ``nonnegative``.
    """
    device = features.device
    n, dim = features.shape
    capacity = min(budget, n)
    need = capacity * (capacity + dim) * 8
    if need > max_gram_bytes:
        raise FactorTooLarge("exact", n, budget, capacity, need, ridge=lam > 0)
    g = features
    b = g.sum(dim=0, dtype=torch.float64) if target is None else target.to(device=device, dtype=torch.float64)
    b_norm = float(b.norm())
    banned = torch.zeros(n, dtype=torch.bool, device=device)
    in_support = torch.zeros(n, dtype=torch.bool, device=device)
    skipped: list[int] = []  # in the span of the support: retried once the support shrinks
    fit = _IncrementalRidge(dim, b, lam, capacity, device)
    w = torch.zeros(0, dtype=torch.float64, device=device)
    residual = b.clone()
    for _ in range(2 * n + 4 * budget):  # cap: a pruned atom may come back, so bound the rounds
        if len(fit.atoms) >= budget or b_norm == 0 or float(residual.norm()) <= tol * b_norm:
            break
        corr = g @ residual.to(g.dtype)
        score = corr if nonnegative else corr.abs()
        score = torch.where(banned | in_support, torch.full_like(score, -torch.inf), score)
        j = int(score.argmax())
        if bool(banned[j] | in_support[j]) or float(score[j]) <= 0:
            break
        if not fit.add(j, g[j]):
            banned[j] = True
            skipped.append(j)
            continue
        in_support[j] = True
        w = fit.solve()
        while nonnegative and fit.atoms and float(w.min()) < 0:
            out = fit.atoms[int(w.argmin())]
            fit.remove(int(w.argmin()))
            in_support[out] = False
            if out == j:
                banned[j] = True  # pruned right after being added: it would be picked again at once
            if skipped:  # the span shrank: atoms skipped for lying in it may add something now
                banned[torch.tensor(skipped, device=device)] = False
                skipped.clear()
            w = fit.solve()
        residual = b - fit.combination(w)
    idx = torch.tensor(fit.atoms, dtype=torch.long, device=device)
    w = w[: len(idx)]
    keep = w > 0 if nonnegative else w != 0
    return idx[keep], w[keep].to(features.dtype)


class _IncrementalRidge:
    """Cholesky factor L of (A_S A_Sᵀ + λI) with the rows A_S kept alongside; solves for the OMP weights."""

    def __init__(self, dim: int, b: Tensor, lam: float, capacity: int, device: torch.device) -> None:
        self.b, self.lam = b, lam
        self.atoms: list[int] = []
        self.factor = _lower(0, device)
        self.rows = torch.zeros(capacity, dim, dtype=torch.float64, device=device)
        self.rhs = torch.zeros(capacity, dtype=torch.float64, device=device)

    def add(self, j: int, row: Tensor) -> bool:
        """Append atom ``j`` with feature ``row``; False (nothing changes) when it lies in the span of the others."""
        k, atom = len(self.atoms), row.to(torch.float64)
        diag = float(atom @ atom) + self.lam
        if k:
            cross = self.rows[:k] @ atom
            new = torch.linalg.solve_triangular(self.factor, cross[:, None], upper=False)[:, 0]
            pivot = diag - float(new @ new)
        else:
            new, pivot = None, diag
        if pivot <= _SPAN_RTOL * max(diag, 1e-300):
            return False
        factor = _lower(k + 1, atom.device)
        factor[:k, :k] = self.factor
        if new is not None:
            factor[k, :k] = new
        factor[k, k] = pivot**0.5
        self.factor = factor
        self.rows[k] = atom
        self.rhs[k] = atom @ self.b
        self.atoms.append(j)
        return True

    def solve(self) -> Tensor:
        k = len(self.atoms)
        if k == 0:
            return self.rhs[:0]
        return _cholesky_solve(self.factor, self.rhs[:k])

    def combination(self, w: Tensor) -> Tensor:
        """Σ_j w_j g_j over the support, in float64."""
        return w @ self.rows[: len(self.atoms)] if self.atoms else torch.zeros_like(self.b)

    def remove(self, position: int) -> None:
        """Drop one atom: its row and column leave the factor by a rank-one update, O(k²)."""
        k = len(self.atoms)
        self.factor = _delete_factor_row(self.factor, position)
        self.rows[position:k - 1] = self.rows[position + 1:k].clone()
        self.rhs[position:k - 1] = self.rhs[position + 1:k].clone()
        del self.atoms[position]
