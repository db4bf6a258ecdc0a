"""Greedy coreset solvers on gradient features: pure tensor functions.

**CRAIG** (:func:`facility_location`, Mirzasoleiman et al. 2020): pick k medoids that minimise the
sum of squared gradient distances of every point to its nearest pick, with Minoux's lazy greedy;
each pick is weighted by the number of points it represents. The bounds live in one tensor and the
largest stale ones are refreshed together in one (n × batch) distance block, the batch doubling
while the top stays stale, so a step costs a few matrix products instead of heap operations.
Distances are float32 (float64 features give the exact reference the tests compare with; the
greedy sequence is the same on non-degenerate data), from the features or, for last-layer
gradients, from their rank-one factors (below), ~10× fewer FLOPs at ResNet-18 sizes.
``stochastic_eps`` switches to the stochastic greedy of Mirzasoleiman et al. 2015 ("Lazier than
lazy greedy"): O(n² ln(1/ε)) work at any k and E[F(S)] ≥ (1 − 1/e − ε)·F(S*), against the lazy
greedy's deterministic (1 − 1/e).

**GradMatch** (Killamsetty et al. 2021): match the full gradient sum b with non-negative weights on
at most k atoms, min ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖². Two solvers for the same objective:

- :func:`orthogonal_matching_pursuit`, the exact reference: one atom per round, incremental
  Cholesky, pruning of negative weights. O(k) passes over the candidates and a k×k factor.
- :func:`batch_omp`, the fast path (``selector.solver=fast``), chosen from the literature as:

  * *Batched atom selection* (the stagewise / generalised OMP family: StOMP, Donoho et al. 2012;
    gOMP, Wang, Kwon & Shim 2012): one float32 product over all n candidates serves m ≈ k_OMP/32
    new atoms (k_OMP: the budget left to OMP after the surplus draws below), so the number of
    passes over the 1 GiB feature matrix is ~32, not k. Plain top-m picks near-duplicates (up to 3×
    the reference's matching error at m = 4); the m atoms are therefore chosen from a pool of the
    4m most correlated by OMP *inside the pool*: a left-looking pivoted Cholesky of the pool's Gram
    matrix projected off the support, which forms only the visited pivots' columns (the
    right-looking rank-one update of the whole pool per pivot was half the solver's time). This
    keeps the matching error within one percentage point of the reference on the tests' problems.
    The pool's work is proportional to its size, so m follows k_OMP, not k: sizing it by k made
    every round at k = 25,000 four times larger than the 5,130 atoms OMP may take need.
  * *Warm-started Lawson–Hanson NNLS* (Lawson & Hanson 1974) for the refit: the previous weights
    are feasible, so each round restores positivity in a few steps (first dropping every
    non-positive atom together, as block principal pivoting does, Kim & Park 2011; then
    Lawson–Hanson's line search, which terminates). The result is exactly NNLS on its support.
    CoSaMP (Needell & Tropp 2009) was ruled out: it re-solves a 2k-atom least-squares problem at
    every iteration, a 50,000-atom system at k = 25,000.
  * *Memory bounded by the feature dimension*: atoms in the span of the support are rejected at
    the pivot, so with λ = 0 the support never exceeds rank ≤ D and the factor is at most D×D
    (5,130² float64, 210 MB) whatever k is. Atoms join by a block update of the factor and leave
    by Givens rotations when few leave (O(m²) each for a trailing block of m) or by re-factorising
    the tail behind the first leaving atom when many do (a QR, O(m³)); the support's rows are kept
    in float64 (no re-gathering). Correlations are float32, factor and solves float64.
  * *Last-layer structure* (:mod:`advtrain.selection.gram`): per-sample cross-entropy gradients of
    the last layer are e ⊗ [1, h], so their Gram blocks cost C + H + 1 instead of C(1 + H) per pair;
    detected on the features (never assumed), used for the pool and cross products of the OMP and
    for CRAIG's distances, with the support's rows rebuilt from the same factors so factor, weights
    and residual describe the same vectors.
  * *Budget beyond the feature dimension* (``surplus``): an exact match needs at most rank ≤ D
    atoms (Carathéodory), so at k = 25,000 > D = 5,130 OMP alone stops near D and would leave the
    rest to a random fill that rescales the picks (the selectors' ``_fill``), which breaks the
    match. With ``surplus="match"`` (the default) the surplus k − D is drawn uniformly up front,
    each draw at its own multiplicity (1 per sample: it stands for itself), and OMP matches what
    the draws leave of the target, Σ over the candidates not drawn: a point of their cone, so an
    exact non-negative match exists. (Drawing at the mean coreset weight n/k, as before, subtracts
    more than the draws hold; on class-clustered features, whose gradients fill C narrow cones,
    that goal left the cone of the rest, OMP ended at the NNLS optimum short of k with a 1e-5
    error, and pruned most of what it added on the way: issue 26.) Slots still free after the match
    are filled by *riders*: draws in the span of the support, g_j = Σ_s c_sj g_s, get weight t and
    the support gives up t·c (:meth:`_BlockRidge.ride`), which changes nothing; real features are
    rank deficient (Σ_c e_c = 0: rank (C − 1)(H + 1) = 4,617 < 5,130 at CIFAR-10/ResNet-18), so
    the span holds most candidates. Riders are picked in the span first, then nearest to it, the
    latter sharing what the tolerance leaves (at least a hundredth of it), so the coreset always has
    k elements and the match stays within the tolerance. ``surplus="none"`` returns the support alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advtrain.selection.gram import LastLayerFactors, last_layer_factors

# An atom whose squared distance to the span of the support is at most this fraction of its squared
# norm lies in that span (adds nothing to the fit); shared by both OMPs' pivots and the riders.
_SPAN_RTOL = 1e-10

# Uniform draws per free slot among which :func:`batch_omp` picks the riders (in the span first).
_RIDER_POOL = 4


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
                      generator: torch.Generator | None = None, structure: bool = True) -> tuple[Tensor, Tensor]:
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
    work = _work_dtype(features)
    mult = None if sample_weight is None else sample_weight.to(device=device, dtype=work)
    if mult is not None and (mult.shape != (n,) or bool((mult < 0).any())):
        raise ValueError(f"sample_weight must be {n} non-negative multiplicities, got shape {tuple(mult.shape)}")
    factors = last_layer_factors(features) if structure else None
    if factors is not None:
        dist = _Distances(None, chunk_size, max_dense_elems, factors.to(work))
    else:
        x = features.to(work)
        # Distances do not change under translation; centring shrinks the norms in ‖a‖²+‖b‖²−2ab and so
        # the cancellation error of near-duplicates (it matters in float32).
        dist = _Distances(x - x.mean(dim=0), chunk_size, max_dense_elems)
    if stochastic_eps is not None:
        selected = _stochastic_greedy(dist, budget, mult, stochastic_eps, generator)
    else:
        selected = _lazy_greedy(dist, budget, mult, lazy_batch)
    idx = torch.tensor(selected, dtype=torch.long, device=device)
    return idx, _nearest_counts(dist, idx, mult).to(features.dtype)


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


def batch_omp(features: Tensor, budget: int, *, lam: float = 0.0, target: Tensor | None = None, tol: float = 1e-6,
              rounds: int = 32, surplus: str = "match", generator: torch.Generator | None = None,
              max_factor_bytes: int = 2 * 2**30, structure: bool = True,
              sample_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GradMatch at scale: batch OMP with a warm-started Lawson–Hanson NNLS refit (see the module docstring).

    Same objective as :func:`orthogonal_matching_pursuit` (non-negative weights): minimise
    ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖² over |S| ≤ ``budget``. Each round adds the ``m`` atoms outside
    the support most correlated with the residual (one float32 product over all candidates;
    m = ⌈budget/rounds⌉, so small budgets are plain OMP), then restores w ≥ 0 by Lawson–Hanson
    steps from the previous weights, and at the end w is the ridge least-squares fit on the final
    support (all positive: NNLS on that support).

    Args:
        features: (n, D) candidates; float32 stays float32 (no copy), the solve is float64.
        budget: Largest support.
        lam: Ridge term λ.
        target: (D,) vector to match (default Σ_i g_i).
        tol: Stop when ‖r‖ ≤ tol·‖b‖.
        rounds: About how many selection rounds to spend on the budget.
        surplus: What a budget beyond what OMP needs does. ``"match"``: budget − D uniform draws up
            front, each at its multiplicity, OMP matching the rest of the target (b − Σ_F m g), then
            riders on the final fit for any slot left (module docstring); the result has exactly
            ``min(budget, n)`` elements when λ = 0. ``"none"``: return the support alone and leave
            the slots to the caller (the selectors' random fill).
        generator: Randomness of the ``"match"`` draws.
        sample_weight: (n,) multiplicity m_i of each candidate in the target (default 1): the
            default target is Σ m_i g_i and a surplus draw gets weight m_j, so what is left to
            match stays a non-negative combination of the candidates not drawn (for a given
            ``target``, that holds when target = Σ c_i g_i with c ≥ m).
        structure: Take Gram blocks from the rank-one factors of last-layer gradient features when
            every row has that form (:mod:`advtrain.selection.gram`; ~10× fewer FLOPs in the pool
            and cross products); off, or for other features: dense float64 products.
        max_factor_bytes: Raise :class:`FactorTooLarge` before copying anything when the float64 factor of the largest
            possible support (min(budget, n), and at most D when λ = 0) and its float64 rows would
            exceed this.

    Returns:
        ``(indices, weights)``, every weight > 0: the support first, then any surplus draws.
    """
    if surplus not in ("match", "none"):
        raise ValueError(f"surplus must be 'match' or 'none', got {surplus!r}")
    device = features.device
    n, dim = features.shape
    budget = min(budget, n)
    cap = budget if lam > 0 else min(budget, dim)
    if cap * (cap + dim) * 8 > max_factor_bytes:
        raise FactorTooLarge("fast", n, budget, cap, cap * (cap + dim) * 8, ridge=lam > 0)
    g = features
    mult = torch.ones(n, dtype=torch.float64, device=device) if sample_weight is None else \
        sample_weight.to(device=device, dtype=torch.float64)
    if mult.shape != (n,) or bool((mult < 0).any()):
        raise ValueError(f"sample_weight must be {n} non-negative multiplicities, got shape {tuple(mult.shape)}")
    b = _row_sum(g, torch.arange(n, device=device), mult) if target is None else \
        target.to(device=device, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if budget <= 0 or float(b.norm()) == 0:
        return empty, torch.zeros(0, dtype=features.dtype, device=device)
    drawn = torch.zeros(n, dtype=torch.bool, device=device)
    fill = empty
    if surplus == "match" and budget > dim:
        fill = _draw(~drawn, budget - dim, generator)
        drawn[fill] = True
    factors = last_layer_factors(g) if structure else None
    fit = _BlockRidge(g, lam, cap, factors=factors)
    step = max(1, math.ceil((budget - len(fill)) / rounds))  # OMP spends only what the up-front draws leave
    # A draw stands for itself (its multiplicity): the goal left to OMP is the sum over the candidates not
    # drawn, a point of their cone, so an exact non-negative match of at most rank ≤ D atoms exists
    # (Carathéodory). Drawing at the mean weight n/k instead subtracts more than the draws put in, and on
    # class-clustered features that goal left the cone: OMP then stopped at the NNLS optimum, short of
    # the budget and inexact, after pruning most of what it added.
    goal = b - _row_sum(g, fill, mult)
    tol_abs = tol * float(b.norm())
    fit.match(goal, budget - len(fill), drawn, tol_abs, step)
    riders, rider_weights = empty, torch.zeros(0, dtype=torch.float64, device=device)
    room = budget - len(fill) - len(fit.atoms)
    if surplus == "match" and room > 0 and lam == 0:
        free = ~drawn
        free[fit.atoms] = False
        riders, rider_weights = _riders(fit, goal, free, room, mult, tol_abs, generator)
    w = fit.weights
    keep = w > 0
    idx = torch.cat([fit.atoms[keep], fill, riders])
    weights = torch.cat([w[keep], mult[fill], rider_weights])
    return idx, weights.to(features.dtype)


def _riders(fit: _BlockRidge, goal: Tensor, free: Tensor, room: int, mult: Tensor, tol_abs: float,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``room`` more candidates that ride on the final fit (:meth:`_BlockRidge.ride`): (indices, weights).

    Of ``_RIDER_POOL``·room uniform draws, those in the span of the support come first (in draw
    order: the match does not move), then the nearest to it; these share what the tolerance leaves
    of the residual, at least a hundredth of it. Rank-deficient features (last-layer gradients) have
    far more candidates in the span than slots, so riders rarely move the match at all.
    """
    extra = _draw(free, _RIDER_POOL * room, generator)
    if len(extra) == 0:
        return extra, torch.zeros(0, dtype=torch.float64, device=goal.device)
    coef, dist, in_span = fit.projection(extra)
    _, sq, _ = fit._products(extra, pairwise=False)
    rel = torch.where(in_span, 0.0, dist / sq.sqrt().clamp_min(1e-300))
    order = torch.sort(rel, stable=True).indices[:room]
    left = tol_abs - float((goal - fit.combination(fit.weights)).norm())
    weights = fit.ride(coef[:, order], mult[extra[order]], torch.where(in_span, 0.0, dist)[order],
                       max(left, 0.01 * tol_abs))
    return extra[order], weights


def _draw(free: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` uniformly random positions where ``free`` is true (fewer if there are fewer)."""
    pool = torch.nonzero(free).flatten()
    order = torch.randperm(len(pool), generator=generator).to(pool.device)
    return pool[order[: max(0, count)]]


def _row_sum(g: Tensor, idx: Tensor, mult: Tensor, chunk: int = 2048) -> Tensor:
    """Σ_{i∈idx} m_i g_i in float64, gathered a chunk of rows at a time."""
    out = torch.zeros(g.shape[1], dtype=torch.float64, device=g.device)
    for s in range(0, len(idx), chunk):
        part = idx[s:s + chunk]
        out += mult[part] @ g[part].to(torch.float64)
    return out


# Deleting d atoms from a factor's trailing block of size m: d Givens sweeps cost ~d·m Python-level
# steps, a QR ~m³ flops; measured break-even d ≈ m² / 1.25e6 on a 2-core CPU (m = 1,000: QR; 3,000: d ≤ 7).
_GIVENS_VS_QR = 1_250_000


class _BlockRidge:
    """Support, weights and the Cholesky factor L of (A_S A_Sᵀ + λI) for :func:`batch_omp`.

    The support's rows are kept in float64 next to the factor (no gathering or converting them
    again). Atoms join a block at a time (one triangular solve with m right-hand sides,
    O(k²m + kmD)); atoms leave by re-factorising only the trailing part of L behind the first one
    leaving, from L's own rows (a QR of at most k×k). Memory: ``capacity``² + ``capacity``·D float64.
    """

    def __init__(self, g: Tensor, lam: float, capacity: int, pool: int = 4,
                 factors: LastLayerFactors | None = None) -> None:
        self.g, self.lam, self.capacity, self.pool, self.factors = g, lam, capacity, pool, factors
        device = g.device
        self.k = 0
        self._atoms = torch.zeros(capacity, dtype=torch.long, device=device)
        self.factor = _lower(0, device)
        self._rows = torch.zeros(capacity, g.shape[1], dtype=torch.float64, device=device)
        self.rhs = torch.zeros(0, dtype=torch.float64, device=device)
        self.weights = torch.zeros(0, dtype=torch.float64, device=device)
        self.banned = torch.zeros(len(g), dtype=torch.bool, device=device)
        self.strikes = torch.zeros(len(g), dtype=torch.int8, device=device)
        self.skipped = torch.zeros(len(g), dtype=torch.bool, device=device)  # in the span of the support
        self.exact = False
        self.goal = torch.zeros(g.shape[1], dtype=torch.float64, device=device)

    @property
    def atoms(self) -> Tensor:
        return self._atoms[: self.k]

    @property
    def rows(self) -> Tensor:
        return self._rows[: self.k]

    def combination(self, w: Tensor) -> Tensor:
        return w @ self.rows if self.k else torch.zeros_like(self.goal)

    def add(self, cand: Tensor, corr: Tensor, take: int) -> Tensor:
        """Append up to ``take`` atoms of the pool ``cand``, chosen as OMP would within the pool; returns them.

        ``corr`` holds the pool's correlations with the residual, which is orthogonal to the support.
        A pivoted Cholesky of the pool's Gram matrix projected off the support (its Schur complement)
        picks, at each step, the pool atom most correlated with the residual *after* the atoms
        already taken are projected out of it, so near-duplicates of a pick fall back instead of
        joining the same round. A pool atom in the span of the support and the picks is skipped.
        """
        k = self.k
        take = min(take, self.capacity - k)
        block, schur, cross = self._products(cand, pairwise=True)
        schur += self.lam * torch.eye(len(cand), dtype=torch.float64, device=schur.device)
        diag = schur.diagonal().clone()
        coupling = None
        if k:
            coupling = torch.linalg.solve_triangular(self.factor, cross, upper=False)  # k × M
            schur -= coupling.T @ coupling
        # Left-looking pivoted Cholesky: only the visited pivots' columns are formed, each from the
        # Schur complement's row and the columns accepted so far (O(M·a) per pivot); the right-looking
        # form's rank-one update of the whole M×M complement per pivot was half the solver's time.
        c = corr.to(torch.float64).clone()  # −inf marks a pool atom already looked at
        open_ = torch.ones(len(cand), dtype=torch.bool, device=schur.device)
        accepted: list[int] = []
        cols = torch.zeros(max(take, 0), len(cand), dtype=torch.float64, device=schur.device)  # row a: new column a
        while len(accepted) < take:
            i = int(c.argmax())
            ci = float(c[i])
            if not ci > 0:  # also −inf: every pool atom looked at
                break
            open_[i] = False
            c[i] = -torch.inf
            a = len(accepted)
            col = schur[i] - cols[:a].T @ cols[:a, i] if a else schur[i].clone()
            pivot = float(col[i])
            if pivot <= _SPAN_RTOL * max(float(diag[i]), 1e-300):
                continue
            col /= pivot**0.5
            cols[a] = col
            c -= col * (ci / pivot**0.5)  # the residual loses its component along the new atom
            accepted.append(i)
        acc = torch.tensor(accepted, dtype=torch.long, device=cand.device)
        self.skipped[cand[~open_]] = True  # looked at and not taken: in the span (until the support shrinks)
        self.skipped[cand[acc]] = False
        a = len(accepted)
        if a:
            factor = _lower(k + a, schur.device)
            factor[:k, :k] = self.factor
            if coupling is not None:
                factor[k:, :k] = coupling[:, acc].T
            factor[k:, k:] = cols[:a, acc].T
            self.factor = factor
            self._atoms[k:k + a] = cand[acc]
            # With factors, the support's rows are the factors' own products, so the factor, the
            # weights and the residual all describe the same vectors.
            new_rows = block[acc] if block is not None else self.factors.rows(cand[acc]).dense()
            self._rows[k:k + a] = new_rows
            self.rhs = torch.cat([self.rhs, new_rows @ self.goal])
            self.weights = torch.cat([self.weights, torch.zeros(a, dtype=torch.float64, device=schur.device)])
            self.k = k + a
        return cand[acc]

    def remove(self, drop: Tensor) -> None:
        """Remove the atoms at the (boolean) positions ``drop``; the factor's leading part is kept."""
        positions = torch.nonzero(drop).flatten().tolist()
        first = positions[0]
        keep = ~drop
        kept = int(keep.sum())
        tail_keep = torch.nonzero(keep[first:]).flatten() + first
        span = self.k - first
        if len(positions) * _GIVENS_VS_QR < span * span:
            # A few atoms: one O(span) loop of Givens rotations each (O(span²) work), instead of a
            # QR of the whole trailing block (O(span³)) — 7× faster for one atom at span 3,000.
            for q in reversed(positions):
                self.factor = _delete_factor_row(self.factor, q)
        else:
            tail_rows = self.factor[tail_keep, first:]  # (q, k − first)
            r = torch.linalg.qr(tail_rows.T, mode="r")[1]  # tail_rows·tail_rowsᵀ = RᵀR
            r = r * torch.where(r.diagonal() < 0, -1.0, 1.0).to(r)[:, None]
            factor = _lower(kept, r.device)
            factor[:first, :first] = self.factor[:first, :first]
            factor[first:, :first] = self.factor[tail_keep, :first]
            factor[first:, first:] = r.T
            self.factor = factor
        self._atoms[first:kept] = self._atoms[tail_keep]
        self._rows[first:kept] = self._rows[tail_keep]
        self.k = kept
        self.rhs, self.weights = self.rhs[keep], self.weights[keep]
        self.skipped.zero_()  # the span shrank: skipped candidates may add something again

    def solve(self) -> Tensor:
        if self.k == 0:
            return self.rhs
        return _cholesky_solve(self.factor, self.rhs)

    def retarget(self, goal: Tensor) -> None:
        self.goal = goal
        self.rhs = self.rows @ goal

    def refit(self, fresh: Tensor, bulk_steps: int = 6) -> None:
        """Restore a positive fit on the support, from the current (non-negative) weights.

        ``fresh`` marks atoms just added: one whose fit is not positive is pruned at once (another atom
        of its block explains it better), and banned the third time that happens. Older atoms with a
        non-positive fit are first dropped all together (``bulk_steps`` times: one re-factorisation
        per step instead of one per atom); if the fit is still not positive, Lawson–Hanson steps take
        over (move from the old weights towards the fit until the first weight reaches zero, drop
        that atom), which terminate. Dropped older atoms may be picked again later.
        """
        for it in range(4 * len(self.atoms) + bulk_steps + 4):
            z = self.solve()
            bad = z <= 0
            if not bool(bad.any()):
                self.weights = z
                return
            if bool((bad & fresh).any()) or it < bulk_steps:
                out = bad & fresh if bool((bad & fresh).any()) else bad
                pruned = self.atoms[out & fresh]
                self.strikes[pruned] += 1
                self.banned[pruned[self.strikes[pruned] >= 3]] = True
                self.weights = self.weights.clamp_min(0)
                self.remove(out)
                fresh = fresh[~out]
                continue
            w = self.weights
            ratio = torch.where(bad, w / (w - z), torch.full_like(w, torch.inf))
            step = float(ratio.min())
            w = w + step * (z - w)
            out = bad & (w <= 1e-12 * float(w.abs().max()))
            out[int(ratio.argmin())] = True
            self.weights = w.clamp_min(0)
            self.remove(out)
            fresh = fresh[~out]
        raise RuntimeError("Lawson–Hanson refit did not converge")  # unreachable: each step removes an atom

    def _products(self, cand: Tensor, pairwise: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """The candidates' float64 rows (dense path only), their Gram matrix (``pairwise``) or squared
        norms, and the support × candidate products (None for an empty support).

        Last-layer features take both from their rank-one factors; other features from the rows.
        """
        if self.factors is not None:
            pool = self.factors.rows(cand)
            inner = pool.gram(pool) if pairwise else pool.sq_norms()
            return None, inner, self.factors.rows(self.atoms).gram(pool) if self.k else None
        block = self.g[cand].to(torch.float64)
        inner = block @ block.T if pairwise else (block * block).sum(dim=1)
        return block, inner, self.rows @ block.T if self.k else None

    def projection(self, cand: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The candidates' least-squares coefficients on the support (k × #cand), their distances to its
        span, and which lie in it (the same pivot test as :meth:`add`): g_j = Σ_s c_sj g_s + r_j."""
        _, sq, cross = self._products(cand, pairwise=False)
        y = torch.linalg.solve_triangular(self.factor, cross, upper=False)
        dist_sq = (sq - (y * y).sum(dim=0)).clamp_min(0)
        coef = torch.linalg.solve_triangular(self.factor.T, y, upper=True)
        return coef, dist_sq.sqrt(), dist_sq <= _SPAN_RTOL * sq.clamp_min(1e-300)

    def ride(self, coef: Tensor, nominal: Tensor, dist: Tensor, slack: float, keep: float = 0.5) -> Tensor:
        """Give candidates positive weights while the fit moves by at most ``slack``.

        With g_j = Σ_s c_sj g_s + r_j, adding t_j g_j and removing t_j Σ_s c_sj g_s moves Σ w g by
        t_j r_j: nothing for a candidate in the span of the support (rank-deficient features such as
        last-layer gradients, Σ_c e_c = 0, leave most draws there), and at most ``slack`` in all
        for the others, whose t_j is capped by the slack they share (Σ_j t_j ‖r_j‖ ≤ slack). Rider by
        rider, t_j = ``nominal``_j (its multiplicity) unless that would take a support weight below
        ``keep`` of its current value or overrun its slack share; then t_j shrinks to that limit.
        An exact non-negative match sits at a vertex with some small support weights, so riders
        often get less than their multiplicity (bench/results/solvers_scale_cpu.md reports how
        much). Returns the riders' weights, all > 0.
        """
        w = self.weights.clone()
        out = torch.zeros(coef.shape[1], dtype=torch.float64, device=w.device)
        outside = dist > 0
        share = slack / max(1, int(outside.sum()))
        for j in range(coef.shape[1]):
            nom = float(nominal[j])
            shift = nom * coef[:, j]
            grows = shift > 0
            t = 1.0 if not bool(grows.any()) else min(1.0, (1 - keep) * float((w[grows] / shift[grows]).min()))
            if bool(outside[j]):
                t = min(t, share / (nom * float(dist[j])))
            w -= t * shift
            out[j] = t * nom
        self.weights = w
        return out

    def match(self, goal: Tensor, budget: int, excluded: Tensor, tol_abs: float, step: int) -> None:
        """Batch OMP rounds towards ``goal`` with at most ``budget`` atoms, none of them ``excluded``."""
        self.retarget(goal)
        if len(self.atoms):
            self.refit(torch.zeros(len(self.atoms), dtype=torch.bool, device=goal.device))
        self.exact = False
        for _ in range(2 * budget + 8):  # cap: every round adds or bans at least one atom, or stops
            residual = goal - self.combination(self.weights)
            if float(residual.norm()) <= tol_abs:
                self.exact = True
                return
            room = budget - len(self.atoms)
            if room <= 0:
                return
            corr = self.g @ residual.to(self.g.dtype)
            blocked = excluded | self.banned | self.skipped
            blocked[self.atoms] = True
            corr.masked_fill_(blocked, -torch.inf)
            top = torch.topk(corr, min(self.pool * min(step, room), len(corr)))
            positive = top.values > 0
            if not bool(positive.any()):
                return
            added = self.add(top.indices[positive], top.values[positive], min(step, room))
            if len(added) == 0:
                continue
            fresh = torch.zeros(len(self.atoms), dtype=torch.bool, device=goal.device)
            fresh[-len(added):] = True
            self.refit(fresh)


def random_subset(n: int, budget: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A uniformly random subset of ``min(budget, n)`` elements (in draw order) with unit weights."""
    idx = torch.randperm(n, generator=generator)[: max(0, min(budget, n))]
    return idx, torch.ones(len(idx))


def full_subset(n: int) -> tuple[Tensor, Tensor]:
    """Every element with unit weight (plain training, and the answer to any budget ≥ n)."""
    return torch.arange(n), torch.ones(n)
