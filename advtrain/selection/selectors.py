"""Selectors: gradient features + labels + budget → weighted coreset (``selector.name``).

The solvers work on whichever candidates the granularity gives them: single samples, or (the
paper's batch-wise default) the mean gradients of mini-batches from a fresh random partition of the
training set, drawn at every selection. Per-class selection runs the solver inside each class with
budgets proportional to class sizes. Weights are on one scale everywhere: roughly the number of
training samples each selected sample stands for, so Σγ ≈ n and the weighted loss Σγℓ/Σγ of a
mixed mini-batch weighs samples consistently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.config.params import param
from advtrain.registry import Registry
from advtrain.selection.solvers import facility_location, orthogonal_matching_pursuit

SELECTORS = Registry("selector")

Solver = Callable[[Tensor, int, torch.Generator], tuple[Tensor, Tensor]]


@dataclass
class Selection:
    """Selected sample indices (ascending, unique) and their weights (> 0)."""

    indices: Tensor
    weights: Tensor
    solver_seconds: float


@dataclass
class RandomParams:
    """Uniform random subset, re-drawn at every selection, unit weights."""

    fraction: float = param(0.5, gt=0, le=1, help="budget = round(fraction·N) samples")
    granularity: str = param("batch", choices=("sample", "batch"), help="draw samples or whole mini-batches")
    batch_size: int | None = param(None, gt=0, help="candidate batch size (null: data.batch_size)")
    per_class: bool = param(False, help="draw within each class, proportionally to its size")


@dataclass
class CraigParams(RandomParams):
    """CRAIG: facility location on squared gradient distances (lazy greedy)."""

    features: str = param("weights", choices=("weights", "bias"),
                          help="last-layer gradient: bias and weights, or the bias part only")
    chunk_size: int = param(4096, gt=0, help="rows per distance block (memory bound)")


@dataclass
class GradMatchParams(RandomParams):
    """GradMatch: OMP matching the full gradient sum, non-negative ridge weights."""

    features: str = param("weights", choices=("weights", "bias"),
                          help="last-layer gradient: bias and weights, or the bias part only")
    lam: float = param(0.0, ge=0, help="ridge regularisation of the OMP weights")


def class_budgets(counts: list[int], budget: int) -> list[int]:
    """Split ``budget`` over classes in proportion to ``counts`` (largest remainder; sums exactly).

    Every non-empty class gets at least one slot when the budget allows it.
    """
    total = sum(counts)
    if total == 0:
        return [0] * len(counts)
    budget = min(budget, total)
    raw = [budget * c / total for c in counts]
    out = [min(c, math.floor(r)) for c, r in zip(counts, raw, strict=True)]
    if budget >= sum(1 for c in counts if c):
        for i, c in enumerate(counts):
            if c and out[i] == 0:
                out[i] = 1
    order = sorted(range(len(counts)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))
    while sum(out) < budget:
        for i in order:
            if sum(out) < budget and out[i] < counts[i]:
                out[i] += 1
    while sum(out) > budget:
        for i in sorted(range(len(counts)), key=lambda i: (out[i] - raw[i]), reverse=True):
            if sum(out) > budget and out[i] > 1:
                out[i] -= 1
    return out


def _solve_group(rows: Tensor, features: Tensor, budget: int, solver: Solver, granularity: str,
                 batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Select within one group of sample ``rows``; returns (sample indices, per-sample weights)."""
    if budget <= 0 or len(rows) == 0:
        return rows[:0], torch.zeros(0)
    if granularity == "sample":
        idx, w = solver(features[rows.to(features.device)], budget, generator)
        return rows[idx.cpu()], w.float().cpu()
    perm = rows[torch.randperm(len(rows), generator=generator)]
    batches = list(perm.split(batch_size))
    owner = torch.repeat_interleave(torch.arange(len(batches)), torch.tensor([len(b) for b in batches]))
    sums = torch.zeros(len(batches), features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, owner.to(features.device), features[perm.to(features.device)])
    sizes = torch.tensor([len(b) for b in batches], dtype=features.dtype, device=features.device)
    means = sums / sizes[:, None]
    n_batches = min(len(batches), math.ceil(budget / batch_size))
    idx, w = solver(means, n_batches, generator)
    picked, weights = [], []
    for slot, b in enumerate(idx.cpu().tolist()):
        members = batches[b]
        picked.append(members)
        # Σ_i g_i ≈ B·Σ_b w_b·mean_b = Σ_{i∈b} (B·w_b/|b|)·g_i: per-sample weight on the sample scale.
        weights.append(torch.full((len(members),), float(w[slot]) * batch_size / len(members)))
    if not picked:
        return rows[:0], torch.zeros(0)
    return torch.cat(picked), torch.cat(weights)


def _fill(chosen: Tensor, weights: Tensor, rows: Tensor, budget: int,
          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Top up a short selection with random unselected rows of the group.

    OMP may stop early (residual matched, or no positively correlated atom left). Filling keeps
    the coreset size — and so the cost of a coreset epoch — what the recipe asked for. Fill samples
    get the mean weight of the solver's picks (1 if none), so they neither dominate nor vanish in
    Σγℓ/Σγ.
    """
    missing = budget - len(chosen)
    if missing <= 0:
        return chosen, weights
    mask = torch.ones(int(rows.max()) + 1 if len(rows) else 0, dtype=torch.bool)
    mask[chosen] = False
    free = rows[mask[rows]]
    extra = free[torch.randperm(len(free), generator=generator)[:missing]]
    fill_weight = float(weights.mean()) if len(weights) else 1.0
    return torch.cat([chosen, extra]), torch.cat([weights, torch.full((len(extra),), fill_weight)])


def select_with(solver: Solver, params: RandomParams, features: Tensor, labels: Tensor, *,
                generator: torch.Generator, batch_size: int) -> Selection:
    """Run ``solver`` over the groups and granularity the params ask for."""
    start = time.perf_counter()
    labels = labels.cpu()
    n = len(labels)
    budget = max(1, round(params.fraction * n))
    candidate_batch = params.batch_size or batch_size
    if params.per_class:
        classes = torch.unique(labels).tolist()
        groups = [torch.nonzero(labels == c).flatten() for c in classes]
        budgets = class_budgets([len(g) for g in groups], budget)
    else:
        groups, budgets = [torch.arange(n)], [budget]
    all_idx, all_w = [], []
    for rows, k in zip(groups, budgets, strict=True):
        idx, w = _solve_group(rows, features, k, solver, params.granularity, candidate_batch, generator)
        idx, w = _fill(idx, w, rows, k, generator)
        all_idx.append(idx)
        all_w.append(w)
    indices, weights = torch.cat(all_idx), torch.cat(all_w)
    order = torch.argsort(indices)
    return Selection(indices[order], weights[order].float(), time.perf_counter() - start)


@SELECTORS.register("full")
def select_full(params: None, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                batch_size: int) -> Selection:
    """Every sample, unit weights (plain adversarial training)."""
    n = len(labels)
    return Selection(torch.arange(n), torch.ones(n), 0.0)


@SELECTORS.register("random", RandomParams)
def select_random(params: RandomParams, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                  batch_size: int) -> Selection:
    """Uniformly random subset, re-drawn at every selection, unit weights."""

    def solver(x: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randperm(len(x), generator=gen)[:k].to(x.device), torch.ones(min(k, len(x)))

    selection = select_with(solver, params, features, labels, generator=generator, batch_size=batch_size)
    selection.weights = torch.ones_like(selection.weights)
    return selection


@SELECTORS.register("craig", CraigParams)
def select_craig(params: CraigParams, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Selection:
    """Adversarial CRAIG: facility location on last-layer gradient features."""

    def solver(x: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return facility_location(x, k, chunk_size=params.chunk_size)

    return select_with(solver, params, features, labels, generator=generator, batch_size=batch_size)


@SELECTORS.register("gradmatch", GradMatchParams)
def select_gradmatch(params: GradMatchParams, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                     batch_size: int) -> Selection:
    """Adversarial GradMatch: OMP on last-layer gradient features."""

    def solver(x: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return orthogonal_matching_pursuit(x, k, lam=params.lam)

    return select_with(solver, params, features, labels, generator=generator, batch_size=batch_size)
