"""Greedy coreset solvers on gradient features: pure tensor functions.

``facility_location`` is CRAIG (Mirzasoleiman et al. 2020): pick k medoids that minimise the sum of
squared gradient distances of every point to its nearest pick, with Minoux's lazy greedy; each pick
is weighted by the number of points it represents. ``orthogonal_matching_pursuit`` is GradMatch
(Killamsetty et al. 2021): greedily add the atom most correlated with the residual of the full
gradient sum and refit non-negative ridge least squares. Both run on the features' device and
never hold more than ``max_dense_elems`` pairwise distances at once.
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from advtrain.errors import UserError


def _sq_norms(x: Tensor) -> Tensor:
    return (x * x).sum(dim=1)


def _distance_block(rows: Tensor, rows_sq: Tensor, cols: Tensor, cols_sq: Tensor) -> Tensor:
    """Squared Euclidean distances between two sets of rows, clamped at 0 against round-off."""
    return (rows_sq[:, None] + cols_sq[None, :] - 2.0 * rows @ cols.T).clamp_min_(0.0)


def _work_dtype(x: Tensor) -> torch.dtype:
    # float64 on the CPU keeps the greedy order exact and testable; float32 on accelerators.
    return torch.float64 if x.device.type == "cpu" else torch.float32


class _Distances:
    """Distance columns d(:, j): from a dense matrix when it fits, else computed on demand."""

    def __init__(self, x: Tensor, chunk_size: int, max_dense_elems: int) -> None:
        self.x = x
        self.sq = _sq_norms(x)
        self.n = len(x)
        self.chunk_size = max(1, chunk_size)
        self.dense: Tensor | None = None
        if self.n * self.n <= max_dense_elems:
            self.dense = torch.cat([_distance_block(x[s:s + self.chunk_size], self.sq[s:s + self.chunk_size],
                                                    x, self.sq) for s in range(0, self.n, self.chunk_size)])

    def column(self, j: int) -> Tensor:
        return self.columns([j])[:, 0]

    def columns(self, js: list[int]) -> Tensor:
        """Distance columns d(:, js) as an (n, len(js)) block."""
        if self.dense is not None:
            return self.dense[js].T  # symmetric: contiguous rows instead of strided columns
        return _distance_block(self.x, self.sq, self.x[js], self.sq[js])

    def initial_gains(self, mult: Tensor | None) -> tuple[Tensor, float]:
        """Gain of every candidate against the empty set, and the largest distance C.

        With similarity s = C − d, F(∅) = 0 and the first gain of j is Σ_i m_i (C − d_ij).
        """
        col_sums = torch.zeros(self.n, dtype=self.x.dtype, device=self.x.device)
        top = torch.zeros((), dtype=self.x.dtype, device=self.x.device)
        for s in range(0, self.n, self.chunk_size):
            block = self.dense[s:s + self.chunk_size] if self.dense is not None else _distance_block(
                self.x[s:s + self.chunk_size], self.sq[s:s + self.chunk_size], self.x, self.sq)
            col_sums += block.sum(dim=0) if mult is None else mult[s:s + self.chunk_size] @ block
            top = torch.maximum(top, block.max())
        c = float(top)
        total = self.n if mult is None else float(mult.sum())
        return total * c - col_sums, c


def _gains(cur: Tensor, cols: Tensor, mult: Tensor | None) -> Tensor:
    """Marginal gains Σ_i m_i·max(0, cur_i − d_ij) of the candidates whose distance columns are given."""
    slack = (cur[:, None] - cols).clamp_min(0)
    return slack.sum(dim=0) if mult is None else mult @ slack


def facility_location(features: Tensor, budget: int, *, chunk_size: int = 4096,
                      max_dense_elems: int = 25_000_000, lazy_batch: int = 8,
                      sample_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CRAIG: lazy-greedy facility location on −squared distances.

    Maximises F(S) = Σ_i m_i·max_{j∈S} (C − d_ij) with d_ij = ‖g_i − g_j‖² and C the largest
    distance; the greedy sequence does not depend on C, so the work is on distances: each step adds
    the element that most reduces Σ_i m_i·min_{j∈S} d_ij. Equal gains go to the smallest index.

    Args:
        features: (n, D) per-sample (or per-batch) gradients.
        budget: Number of elements to select.
        chunk_size: Rows per distance block.
        max_dense_elems: Build the n×n distance matrix only when n² is at most this; otherwise
            distance columns are recomputed on demand (O(nD) each) and memory stays O(n·chunk).
        lazy_batch: Stale upper bounds refreshed together per step of the lazy greedy (the result
            is the exact greedy sequence for any value; larger batches trade work for fewer steps).
        sample_weight: Optional (n,) multiplicities m_i (default 1): how many samples row i stands
            for, e.g. the size of a candidate mini-batch, so a short last batch counts for less.

    Returns:
        ``(indices, weights)``: selected rows in greedy order and, for each, the total multiplicity
        of the rows whose nearest selected element it is (each selected row represents itself;
        other ties go to the element selected first), so the weights sum to Σ m_i (n by default).
    """
    n = len(features)
    device = features.device
    if budget >= n:
        ones = torch.ones(n, device=device)
        return torch.arange(n, device=device), ones if sample_weight is None else sample_weight.to(ones)
    if budget <= 0:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    x = features.to(_work_dtype(features))
    # Distances do not change under translation; centring shrinks the norms in ‖a‖²+‖b‖²−2ab and so
    # the cancellation error of near-duplicates (it matters in float32 on accelerators).
    x = x - x.mean(dim=0)
    mult = None if sample_weight is None else sample_weight.to(device=device, dtype=x.dtype)
    if mult is not None and (mult.shape != (n,) or bool((mult < 0).any())):
        raise ValueError(f"sample_weight must be {n} non-negative multiplicities, got shape {tuple(mult.shape)}")
    dist = _Distances(x, chunk_size, max_dense_elems)
    gains, c = dist.initial_gains(mult)
    cur = torch.full((n,), c, dtype=x.dtype, device=device)  # distance to the nearest pick (C = none yet)
    heap = [(-g, j) for j, g in enumerate(gains.tolist())]
    heapq.heapify(heap)
    selected: list[int] = []
    fresh_round = [0] * n  # round in which each bound was last recomputed
    while len(selected) < budget and heap:
        if fresh_round[heap[0][1]] == len(selected):
            # The top bound is exact for this round and bounds every other gain: the greedy pick.
            _, j = heapq.heappop(heap)
            selected.append(j)
            torch.minimum(cur, dist.column(j), out=cur)
            continue
        # Refresh the stale bounds at the top of the heap together, in one matrix operation.
        batch = [heapq.heappop(heap) for _ in range(min(lazy_batch, len(heap)))]
        stale = [j for _, j in batch if fresh_round[j] != len(selected)]
        fresh_gains = _gains(cur, dist.columns(stale), mult).tolist()
        refreshed = dict(zip(stale, fresh_gains, strict=True))
        for neg_bound, j in batch:
            if j in refreshed:
                fresh_round[j] = len(selected)
                heapq.heappush(heap, (-refreshed[j], j))
            else:
                heapq.heappush(heap, (neg_bound, j))
    idx = torch.tensor(selected, dtype=torch.long, device=device)
    return idx, _nearest_counts(dist, idx, mult).to(features.dtype)


def _nearest_counts(dist: _Distances, idx: Tensor, mult: Tensor | None) -> Tensor:
    """Total multiplicity of the rows each selected element represents (itself included)."""
    n, k = dist.n, len(idx)
    best = torch.full((n,), float("inf"), dtype=dist.x.dtype, device=idx.device)
    owner = torch.zeros(n, dtype=torch.long, device=idx.device)
    for slot in range(k):
        col = dist.column(int(idx[slot]))
        closer = col < best
        best = torch.where(closer, col, best)
        owner = torch.where(closer, torch.full_like(owner, slot), owner)
    owner[idx] = torch.arange(k, device=idx.device)  # a pick always represents itself
    counts = torch.bincount(owner, weights=mult, minlength=k)
    return counts if mult is not None else counts.to(torch.float32)


def orthogonal_matching_pursuit(features: Tensor, budget: int, *, lam: float = 0.0, target: Tensor | None = None,
                                nonnegative: bool = True, tol: float = 1e-6,
                                max_gram_bytes: int = 2 * 2**30) -> tuple[Tensor, Tensor]:
    """GradMatch: OMP with (non-negative) ridge-regularised least squares.

    Minimises ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖² greedily, b = Σ_i g_i by default. Each round adds the
    unselected atom most correlated with the residual (largest ⟨g_j, r⟩; largest |⟨g_j, r⟩| when
    ``nonnegative`` is off) and refits w on the selected atoms through an incrementally grown
    Cholesky factor of the normal equations (O(k²) per atom instead of a fresh O(k³) solve). An atom
    that is (numerically) in the span of the selected ones adds nothing and is skipped.
    Non-negativity is kept by pruning: while some weight is negative, the most negative atom is
    dropped and w refitted. Skipped and pruned atoms are never added again, which guarantees
    termination (the reference code instead abandons OMP when the atom it just added is pruned).
    Stops at ``budget`` atoms, when no atom correlates positively with the residual, or when
    ‖r‖ ≤ tol·‖b‖.

    Returns:
        ``(indices, weights)`` of the selected atoms, all weights > 0 when ``nonnegative``.
    """
    device = features.device
    g = features.to(torch.float64)
    b = g.sum(dim=0) if target is None else target.to(device=device, dtype=torch.float64)
    n = len(g)
    capacity = min(budget, n)
    if capacity * capacity * 8 > max_gram_bytes:
        raise UserError(
            f"GradMatch over {n} candidates with a budget of {budget} needs a {capacity}×{capacity} Gram factor "
            f"({capacity * capacity * 8 / 2**30:.1f} GiB); use selector.granularity=batch or selector.per_class=true")
    b_norm = float(b.norm())
    allowed = torch.ones(n, dtype=torch.bool, device=device)
    fit = _IncrementalRidge(g, b, lam, capacity)
    w = torch.zeros(0, dtype=torch.float64, device=device)
    residual = b.clone()
    for _ in range(2 * n + budget):  # hard cap; every round adds or bans an atom
        if len(fit.atoms) >= budget or b_norm == 0 or float(residual.norm()) <= tol * b_norm:
            break
        corr = g @ residual
        score = corr if nonnegative else corr.abs()
        score = torch.where(allowed, score, torch.full_like(score, -torch.inf))
        j = int(score.argmax())
        if not bool(allowed[j]) or float(score[j]) <= 0:
            break
        allowed[j] = False
        if not fit.add(j):
            continue
        w = fit.solve()
        while nonnegative and fit.atoms and float(w.min()) < 0:
            fit.remove(int(w.argmin()))  # the pruned atom stays banned (allowed is False)
            w = fit.solve()
        residual = b - (w @ g[fit.atoms] if fit.atoms else torch.zeros_like(b))
    idx = torch.tensor(fit.atoms, dtype=torch.long, device=device)
    w = w[: len(idx)]
    keep = w > 0 if nonnegative else w != 0
    return idx[keep], w[keep].to(features.dtype)


class _IncrementalRidge:
    """Cholesky factor L of (A_S A_Sᵀ + λI), grown one atom at a time; solves for the OMP weights."""

    def __init__(self, g: Tensor, b: Tensor, lam: float, capacity: int) -> None:
        self.g, self.b, self.lam = g, b, lam
        self.atoms: list[int] = []
        self.factor = torch.zeros(capacity, capacity, dtype=g.dtype, device=g.device)
        self.rhs = torch.zeros(capacity, dtype=g.dtype, device=g.device)

    def add(self, j: int) -> bool:
        """Append atom ``j``; False (and nothing changes) when it lies in the span of the others."""
        k, atom = len(self.atoms), self.g[j]
        diag = float(atom @ atom) + self.lam
        if k:
            cross = self.g[self.atoms] @ atom
            row = torch.linalg.solve_triangular(self.factor[:k, :k], cross[:, None], upper=False)[:, 0]
            pivot = diag - float(row @ row)
        else:
            row, pivot = None, diag
        if pivot <= 1e-10 * max(diag, 1e-300):
            return False
        if row is not None:
            self.factor[k, :k] = row
        self.factor[k, k] = pivot**0.5
        self.rhs[k] = atom @ self.b
        self.atoms.append(j)
        return True

    def solve(self) -> Tensor:
        k = len(self.atoms)
        if k == 0:
            return self.rhs[:0]
        low = self.factor[:k, :k]
        y = torch.linalg.solve_triangular(low, self.rhs[:k, None], upper=False)
        return torch.linalg.solve_triangular(low.T, y, upper=True)[:, 0]

    def remove(self, position: int) -> None:
        """Drop one atom and refactor the rest from scratch (pruning is rare)."""
        kept = self.atoms[:position] + self.atoms[position + 1:]
        self.atoms = []
        self.factor.zero_()
        for j in kept:
            self.add(j)


def random_subset(n: int, budget: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A uniformly random subset of ``min(budget, n)`` elements (in draw order) with unit weights."""
    idx = torch.randperm(n, generator=generator)[: max(0, min(budget, n))]
    return idx, torch.ones(len(idx))


def full_subset(n: int) -> tuple[Tensor, Tensor]:
    """Every element with unit weight (plain training, and the answer to any budget ≥ n)."""
    return torch.arange(n), torch.ones(n)
