"""CRAIG: facility location on squared gradient distances (Mirzasoleiman et al. 2020).

:func:`facility_location` picks k medoids that minimise the
sum of squared gradient distances of every point to its nearest pick, with Minoux's lazy greedy;
each pick is weighted by the number of points it represents. The bounds live in one tensor and the
largest stale ones are refreshed together in one (n × batch) distance block, the batch doubling
while the top stays stale, so a step costs a few matrix products instead of heap operations.
Distances are float32 (float64 features give the exact reference the tests compare with; the
greedy sequence is the same on non-degenerate data), from the features or, for last-layer
gradients, from their rank-one factors (:mod:`advtrain.selection.gram`), ~10× fewer FLOPs at ResNet-18 sizes.
``stochastic_eps`` switches to the stochastic greedy of Mirzasoleiman et al. 2015 ("Lazier than
lazy greedy"): O(n² ln(1/ε)) work at any k and E[F(S)] ≥ (1 − 1/e − ε)·F(S*), against the lazy
greedy's deterministic (1 − 1/e).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advtrain.selection.gram import LastLayerFactors, last_layer_factors
from advtrain.selection.solvers.craig_batched import batched_lazy_greedy


def _sq_norms(x: Tensor) -> Tensor:
    return (x * x).sum(dim=1)


def _work_dtype(x: Tensor) -> torch.dtype:
    # float64 features are the exact reference (tests); anything else works in float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _Distances:
    """Distance columns d(:, j): from a dense matrix when it fits, else computed on demand.

    Inner products come from the (centred) features, or, for last-layer gradient features, from
    their rank-one factors (:mod:`advtrain.selection.gram`): (C + H + 1) instead of C(1 + H)
    multiply-adds per pair, the same distances up to round-off.
    """

    def __init__(self, x: Tensor | None, chunk_size: int, max_dense_elems: int,
                 factors: LastLayerFactors | None = None) -> None:
        self.x, self.factors = x, factors
        self.sq = factors.sq_norms() if factors is not None else _sq_norms(x)
        self.n = len(self.sq)
        self.dtype, self.device = self.sq.dtype, self.sq.device
        self.chunk_size = max(1, chunk_size)
        self.dense: Tensor | None = None
        if self.n * self.n <= max_dense_elems:
            self.dense = torch.empty(self.n, self.n, dtype=self.dtype, device=self.device)
            for s in range(0, self.n, self.chunk_size):
                self.dense[s:s + self.chunk_size] = self._block(slice(s, s + self.chunk_size), slice(None))

    def _block(self, rows: slice | Tensor, cols: slice | Tensor) -> Tensor:
        """Squared distances between two sets of rows (a slice or an index tensor each)."""
        if self.factors is not None:
            inner = self.factors.rows(rows).gram(self.factors.rows(cols))
        else:
            inner = self.x[rows] @ self.x[cols].T
        return inner.mul_(-2.0).add_(self.sq[rows][:, None]).add_(self.sq[cols][None, :]).clamp_min_(0.0)

    def column(self, j: int) -> Tensor:
        return self.columns([j])[:, 0]

    def columns(self, js: list[int]) -> Tensor:
        """Distance columns d(:, js) as an (n, len(js)) block."""
        if self.dense is not None:
            return self.dense[js].T  # symmetric: contiguous rows instead of strided columns
        return self._block(slice(None), torch.tensor(js, dtype=torch.long, device=self.device))

    def initial_gains(self, mult: Tensor | None) -> tuple[Tensor, float]:
        """Gain of every candidate against the empty set, and the largest distance C.

        With similarity s = C − d, F(∅) = 0 and the first gain of j is Σ_i m_i (C − d_ij).
        """
        col_sums = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        top = torch.zeros((), dtype=self.dtype, device=self.device)
        for s in range(0, self.n, self.chunk_size):
            block = self.dense[s:s + self.chunk_size] if self.dense is not None else self._block(
                slice(s, s + self.chunk_size), slice(None))
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
                      sample_weight: Tensor | None = None, stochastic_eps: float | None = None,
                      generator: torch.Generator | None = None, structure: bool = True,
                      device_greedy: bool | None = None) -> tuple[Tensor, Tensor]:
    """CRAIG: lazy-greedy (or stochastic-greedy) facility location on −squared distances.

    Maximises F(S) = Σ_i m_i·max_{j∈S} (C − d_ij) with d_ij = ‖g_i − g_j‖² and C the largest
    distance; the greedy sequence does not depend on C, so the work is on distances: each step adds
    the element that most reduces Σ_i m_i·min_{j∈S} d_ij. Equal gains go to the smallest index.
    Distances are computed in the features' dtype: float32 features give the fast path (half the
    time and memory of float64), float64 features the exact reference. Last-layer gradient features
    (rank one per sample, detected) get their inner products from the factors, ~10× fewer FLOPs.

    Args:
        features: (n, D) per-sample (or per-batch) gradients.
        budget: Number of elements to select.
        chunk_size: Rows per distance block.
        max_dense_elems: Build the n×n distance matrix only when n² is at most this; otherwise
            distance columns are recomputed on demand (O(nD) each) and memory stays O(n·chunk).
        lazy_batch: Stale upper bounds refreshed together at first in a step of the lazy greedy
            (doubled while the best bound stays stale); the result is the exact greedy sequence
            for any value.
        sample_weight: Optional (n,) multiplicities m_i (default 1): how many samples row i stands
            for, e.g. the size of a candidate mini-batch, so a short last batch counts for less.
        stochastic_eps: Stochastic greedy (Mirzasoleiman et al., "Lazier than lazy greedy", AAAI
            2015) instead of the lazy greedy: each step evaluates the exact gains of
            ⌈(n/k)·ln(1/ε)⌉ random unselected candidates and adds the best, so the whole run costs
            O(n²·ln(1/ε)) distance evaluations whatever k is; E[F(S)] ≥ (1 − 1/e − ε)·F(S*).
        generator: Randomness of the stochastic greedy.
        structure: Use the rank-one factors of last-layer gradient features when every row has
            that form (:func:`advtrain.selection.gram.last_layer_factors`); off: dense products.
        device_greedy: The lazy greedy without a host sync per pick
            (:mod:`advtrain.selection.solvers.craig_batched`): the same sequence, for accelerators,
            where a sync per pick makes the loop host-bound. ``None``: on for CUDA tensors only (on two
            CPU cores the per-pick loop is faster: 11 s against 45 s for 10 classes of 5,000,
            bench/results/solvers_cpu.md).

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
    if stochastic_eps is not None and not 0 < stochastic_eps < 1:
        raise ValueError(f"stochastic_eps must be in (0, 1), got {stochastic_eps}")
    dist, mult = _prepare(features, sample_weight, chunk_size, max_dense_elems, structure)
    if stochastic_eps is not None:
        selected = _stochastic_greedy(dist, budget, mult, stochastic_eps, generator)
    elif device_greedy if device_greedy is not None else device.type == "cuda":
        selected = batched_lazy_greedy([dist], [budget], [mult])[0]
    else:
        selected = _lazy_greedy(dist, budget, mult, lazy_batch)
    idx = torch.tensor(selected, dtype=torch.long, device=device)
    return idx, _nearest_counts(dist, idx, mult).to(features.dtype)


def facility_location_groups(features: list[Tensor], budgets: list[int], *,
                             sample_weights: list[Tensor | None] | None = None, chunk_size: int = 4096,
                             max_dense_elems: int = 25_000_000, max_stack_elems: int = 250_000_000,
                             refresh: int = 128, structure: bool = True) -> list[tuple[Tensor, Tensor]]:
    """:func:`facility_location` (lazy greedy) of several problems at once.

    The problems (e.g. the classes of a per-class selection) advance together through
    :func:`~advtrain.selection.solvers.craig_batched.batched_lazy_greedy`, so a GPU runs one
    batched step for all of them instead of one round trip per pick and problem. Each result is
    what ``facility_location`` returns for that problem alone: the same picks and weights (up to
    float round-off on exact ties). Problems go together while G·n_max² stays within
    ``max_stack_elems`` (the stacked distance matrices: 1 GB of float32 by default, 10 classes of
    5,000), so memory is bounded whatever the class count.
    """
    weights = sample_weights or [None] * len(features)
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(features)
    todo = []
    for g, (x, k, m) in enumerate(zip(features, budgets, weights, strict=True)):
        if 0 < k < len(x):
            todo.append(g)
        else:  # nothing to choose: all rows, or none
            out[g] = facility_location(x, k, sample_weight=m)
    runs: list[list[int]] = []
    for g in todo:
        if runs and (len(runs[-1]) + 1) * max(len(features[h]) for h in [*runs[-1], g]) ** 2 <= max_stack_elems:
            runs[-1].append(g)
        else:
            runs.append([g])
    for run in runs:
        prepared = [_prepare(features[g], weights[g], chunk_size, max_dense_elems, structure) for g in run]
        dists = [d for d, _ in prepared]
        mults = [m for _, m in prepared]
        picks = batched_lazy_greedy(dists, [budgets[g] for g in run], mults, refresh=refresh)
        for g, d, m, p in zip(run, dists, mults, picks, strict=True):
            idx = torch.tensor(p, dtype=torch.long, device=features[g].device)
            out[g] = idx, _nearest_counts(d, idx, m).to(features[g].dtype)
    return out  # type: ignore[return-value]


def _prepare(features: Tensor, sample_weight: Tensor | None, chunk_size: int, max_dense_elems: int,
             structure: bool) -> tuple[_Distances, Tensor | None]:
    """The distances of one problem and its multiplicities in the working dtype (checked)."""
    n, device = len(features), features.device
    work = _work_dtype(features)
    mult = None if sample_weight is None else sample_weight.to(device=device, dtype=work)
    if mult is not None and (mult.shape != (n,) or bool((mult < 0).any())):
        raise ValueError(f"sample_weight must be {n} non-negative multiplicities, got shape {tuple(mult.shape)}")
    factors = last_layer_factors(features) if structure else None
    if factors is not None:
        return _Distances(None, chunk_size, max_dense_elems, factors.to(work)), mult
    x = features.to(work)
    # Distances do not change under translation; centring shrinks the norms in ‖a‖²+‖b‖²−2ab and so
    # the cancellation error of near-duplicates (it matters in float32).
    return _Distances(x - x.mean(dim=0), chunk_size, max_dense_elems), mult


def _lazy_greedy(dist: _Distances, budget: int, mult: Tensor | None, lazy_batch: int) -> list[int]:
    """Minoux's lazy greedy with the bounds in one tensor: refresh the top stale bounds together.

    A step takes the first index of the largest bound (so ties go to the smallest index); when
    that bound is fresh (recomputed since the last pick) it is the exact largest gain, and the
    element is the greedy pick. Otherwise the ``batch`` largest stale bounds are recomputed in one
    (n × batch) block, and ``batch`` doubles for the next miss of the same step; once it reaches
    n/8 with the dense matrix at hand, every bound is recomputed in one pass over its rows.
    """
    n = dist.n
    bounds, c = dist.initial_gains(mult)
    cur = torch.full((n,), c, dtype=dist.dtype, device=dist.device)  # distance to the nearest pick
    fresh = torch.ones(n, dtype=torch.bool, device=bounds.device)  # the initial gains are exact
    selected: list[int] = []
    for _ in range(budget):
        batch = max(1, lazy_batch)
        while True:
            j = int(bounds.argmax())
            if bool(fresh[j]):
                break
            if dist.dense is not None and batch >= n // 8:
                # Most bounds are stale (typically the second step, after the first pick's large drop):
                # refresh them all from the symmetric matrix's rows, without gathering columns.
                open_ = bounds > -torch.inf
                slack = (cur[None, :] - dist.dense).clamp_min_(0)
                bounds[open_] = (slack.sum(dim=1) if mult is None else slack @ mult)[open_]
                fresh.fill_(True)
                continue
            stale_bounds = torch.where(fresh, torch.full_like(bounds, -torch.inf), bounds)
            stale = torch.topk(stale_bounds, min(batch, n)).indices
            stale = stale[stale_bounds[stale] > -torch.inf]
            bounds[stale] = _gains(cur, dist.columns(stale.tolist()), mult)
            fresh[stale] = True
            batch *= 2
        selected.append(j)
        torch.minimum(cur, dist.column(j), out=cur)
        bounds[j] = -torch.inf  # never again
        fresh.zero_()
    return selected


def _stochastic_greedy(dist: _Distances, budget: int, mult: Tensor | None, eps: float,
                       generator: torch.Generator | None) -> list[int]:
    """Stochastic greedy: the best of a fresh random sample of unselected candidates at each step."""
    n = dist.n
    _, c = dist.initial_gains(mult)
    cur = torch.full((n,), c, dtype=dist.dtype, device=dist.device)
    sample = min(n, math.ceil(n / budget * math.log(1 / eps)))
    free = torch.ones(n, dtype=torch.bool)
    selected: list[int] = []
    for _ in range(budget):
        pool = torch.nonzero(free).flatten()
        cand = pool[torch.randperm(len(pool), generator=generator)[:sample]].sort().values
        gains = _gains(cur, dist.columns(cand.tolist()), mult)
        j = int(cand[int(gains.argmax())])
        selected.append(j)
        free[j] = False
        torch.minimum(cur, dist.column(j), out=cur)
    return selected


def _nearest_counts(dist: _Distances, idx: Tensor, mult: Tensor | None, chunk: int = 256) -> Tensor:
    """Total multiplicity of the rows each selected element represents (itself included)."""
    n, k = dist.n, len(idx)
    best = torch.full((n,), float("inf"), dtype=dist.dtype, device=idx.device)
    owner = torch.zeros(n, dtype=torch.long, device=idx.device)
    for s in range(0, k, chunk):
        block = dist.columns(idx[s:s + chunk].tolist())  # (n, c)
        low, slot = block.min(dim=1).values, block.argmin(dim=1)  # argmin: the first of equal minima
        closer = low < best  # strict: an earlier pick keeps its ties
        best = torch.where(closer, low, best)
        owner = torch.where(closer, slot + s, owner)
    owner[idx] = torch.arange(k, device=idx.device)  # a pick always represents itself
    counts = torch.bincount(owner, weights=mult, minlength=k)
    return counts if mult is not None else counts.to(torch.float32)
