"""CRAIG's lazy greedy without a host sync per pick, several problems at once (per-class selection).

:func:`advtrain.selection.solvers.craig._lazy_greedy` reads the argmax and its freshness on the host
at every step: on a GPU each pick then costs a few tiny kernels and a round trip, so 10 classes of
5,000 with 2,500 picks each (25,000 round trips) take as long as on two CPU cores. Here one
*iteration* is a fixed sequence of batched tensor operations over G problems padded to the largest
one, with no data-dependent control flow on the host:

1. refresh the ``refresh`` largest stale upper bounds of every problem (their exact marginal gains
   from one (G × refresh × n) block of distance rows);
2. take each problem's argmax; when that bound is fresh it is the exact largest gain (every other
   bound is an upper bound on its gain), so the element is the greedy pick: the distances to the
   nearest pick, the bounds and the freshness are updated under that per-problem mask.

That is Minoux's lazy greedy with the same rule as the host loop (the first index of the largest
bound, picked only when fresh), so the picks are the same sequence, ties to the smallest index.
Iterations that pick nothing for a problem just refresh more of its bounds. The host reads one
small tensor of picks per block of iterations, a block being as long as the largest number of picks
still owed (no problem can finish sooner), so there are O(log k) syncs instead of k.
Padded candidates have a bound of −∞ and padded rows a multiplicity of 0: they change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from advtrain.selection.solvers.craig import _Distances


def _stacked_dense(dists: list[_Distances], n: int) -> Tensor | None:
    """All problems' distance matrices in one zero-padded (G, n, n) tensor, or None if any is on demand.

    Each problem's own matrix becomes a view into the stack, so the memory is not doubled.
    """
    if any(d.dense is None for d in dists):
        return None
    stack = torch.zeros(len(dists), n, n, dtype=dists[0].dtype, device=dists[0].device)
    for g, d in enumerate(dists):
        stack[g, :d.n, :d.n] = d.dense
        d.dense = stack[g, :d.n, :d.n]
    return stack


def _rows(dists: list[_Distances], dense: Tensor | None, idx: Tensor, n: int, problem: Tensor) -> Tensor:
    """Distance rows d(idx[g, b], :) of every problem g as a (G, B, n) block (padding: 0).

    ``problem`` is ``arange(G)[:, None]`` on the device, made once (one op less per call).
    """
    if dense is not None:
        return dense[problem, idx]
    out = torch.zeros(len(dists), idx.shape[1], n, dtype=dists[0].dtype, device=idx.device)
    for g, d in enumerate(dists):
        out[g, :, :d.n] = d._block(idx[g].clamp(max=d.n - 1), slice(None))
    return out


def batched_lazy_greedy(dists: list[_Distances], budgets: list[int], mults: list[Tensor | None], *,
                        refresh: int = 128) -> list[list[int]]:
    """The lazy-greedy sequence of each problem (0 < budget < n each), all advanced together.

    Args:
        dists: Each problem's distances (:class:`advtrain.selection.solvers.craig._Distances`), on one device.
        budgets: Picks per problem.
        mults: Each problem's multiplicities (None: 1 each).
        refresh: Stale bounds recomputed per problem and iteration; any value gives the same picks
            (larger: fewer iterations, more work in each).

    Returns:
        Each problem's picks in greedy order.
    """
    g_count = len(dists)
    n = max(d.n for d in dists)
    device, dtype = dists[0].device, dists[0].dtype
    dense = _stacked_dense(dists, n)
    mult = torch.zeros(g_count, n, dtype=dtype, device=device)
    bounds = torch.full((g_count, n), -torch.inf, dtype=dtype, device=device)
    cur = torch.zeros(g_count, n, dtype=dtype, device=device)  # distance to the nearest pick
    for g, (d, m) in enumerate(zip(dists, mults, strict=True)):
        mult[g, :d.n] = 1.0 if m is None else m
        gains, c = d.initial_gains(m)
        bounds[g, :d.n] = gains
        cur[g, :d.n] = c
    fresh = torch.ones(g_count, n, dtype=torch.bool, device=device)  # the initial gains are exact
    count = torch.zeros(g_count, dtype=torch.long, device=device)
    want = torch.tensor(budgets, dtype=torch.long, device=device)
    rows_g = torch.arange(g_count, device=device)
    problem = rows_g[:, None]
    batch = max(1, min(refresh, n))
    picks: list[list[int]] = [[] for _ in dists]
    owed = max(budgets)
    while owed > 0:
        log = torch.empty(owed, g_count, dtype=torch.long, device=device)
        for t in range(owed):
            stale = bounds.masked_fill(fresh, -torch.inf)
            top_vals, top = stale.topk(batch, dim=1)
            slack = (cur[:, None, :] - _rows(dists, dense, top, n, problem)).clamp_min_(0)
            gains = torch.bmm(slack, mult[:, :, None])[:, :, 0]
            # Only stale entries are replaced: a picked element (−∞) must stay out.
            bounds.scatter_(1, top, torch.where(top_vals > -torch.inf, gains, bounds.gather(1, top)))
            fresh.scatter_(1, top, True)
            best, j = bounds.max(dim=1)
            take = fresh[rows_g, j] & (count < want)
            nearest = _rows(dists, dense, j[:, None], n, problem)[:, 0]
            cur = torch.where(take[:, None], torch.minimum(cur, nearest), cur)
            bounds[rows_g, j] = torch.where(take, -torch.inf, best)
            fresh &= ~take[:, None]
            count += take
            log[t] = torch.where(take, j, -1)
        for g, col in enumerate(log.T.tolist()):  # the block's one host transfer
            picks[g] += [j for j in col if j >= 0]
        owed = max(k - len(p) for k, p in zip(budgets, picks, strict=True))
    return picks
