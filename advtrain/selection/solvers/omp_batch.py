"""Batch OMP: GradMatch at scale (Killamsetty et al. 2021), its design note.

Same objective as the exact reference (:mod:`.omp_exact`): match the full gradient sum b with
non-negative weights on at most k atoms, min ‖Σ_{j∈S} w_j g_j − b‖² + λ‖w‖².

The fast path of GradMatch (``selector.solver=fast``), chosen from the literature as:


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
from advtrain.selection.solvers.cholesky import _SPAN_RTOL, FactorTooLarge, _cholesky_solve, _delete_factor_row, _lower

# Uniform draws per free slot among which :func:`batch_omp` picks the riders (in the span first).
_RIDER_POOL = 4


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
