"""Selectors: gradient features + labels + budget → weighted coreset (``selector.name``).

A registry entry is the selector class: ``SELECTORS.get(name).build(params)`` gives a callable
:class:`Selector` that maps (features, labels) to a :class:`Coreset`.

The budget is k = max(1, round(fraction·n)) samples (Python's ``round``: halves go to the even
integer). Per-class selection splits k over the classes in proportion to their sizes
(:func:`class_budgets`) and runs the solver inside each class.

The solvers work on whichever candidates the granularity gives them: single samples, or (the
paper's batch-wise default) the mean gradients of the mini-batches of a fresh random partition of
each group, drawn from the generator at every selection (the last batch of a group may be short).
A batch-wise solver chooses ceil(k_group / batch_size) batches, and every member of a chosen batch
is selected, so a batch-wise coreset holds whole batches: at least k_group samples per group and
less than one extra batch more (up to a short batch more when the short batch is among the picks).
A solver that stops short (OMP) is topped up with random unpicked candidates (:func:`_fill`).
GradMatch's fast solver with ``surplus: match`` (the default, λ = 0) never stops short: it fills
the budget itself with uniform draws that stand for themselves (weight 1 per sample) and matches
the rest of the target, and the slots left ride on the final fit without moving the match (see
:mod:`advtrain.selection.solvers.omp_batch`), so the fill — which rescales and so loses the match — is what
the exact solver, ``surplus: fill`` or a ridge λ > 0 fall back to.

Weights are on one scale everywhere: about the number of training samples each selected sample
stands for, so Σγ ≈ n and the weighted loss Σγℓ/Σγ of a mixed mini-batch weighs samples
consistently; a group's total weight is what its solver gave it, also after a fill. CRAIG: a
pick's weight is the number of samples it represents (a batch represents the samples of every
batch nearest to it), shared equally by its members, so Σγ = n exactly.
GradMatch: OMP matches the candidates to the group's gradient sum divided by the batch size
(= the sum of the batch means when all batches are full, the paper's target; exact otherwise), so
a batch coefficient w_b times the batch size is the number of samples the batch stands for, and
each member gets B·w_b/|b|.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advtrain.coreset import Coreset
from advtrain.errors import UserError
from advtrain.params import param
from advtrain.registry import Registry
from advtrain.selection.solvers import (
    FactorTooLarge,
    batch_omp,
    facility_location,
    facility_location_groups,
    orthogonal_matching_pursuit,
)

SELECTORS = Registry("selector")


@dataclass
class Candidates:
    """What a solver sees for one group (a class, or the whole set).

    Attributes:
        features: (m, D) per-sample gradients, or the mean gradient of each candidate batch.
        sizes: (m,) number of samples in each candidate (all 1 at sample granularity).
        target: (D,) float64 Σ of the group's per-sample gradients divided by ``batch_size``.
        batch_size: nominal candidate size B (1 at sample granularity).
    """

    features: Tensor
    sizes: Tensor
    target: Tensor
    batch_size: int


# (candidates, budget in candidates, generator) → (candidate positions, weight of each pick in samples)
Solver = Callable[[Candidates, int, torch.Generator], tuple[Tensor, Tensor]]


@dataclass
class RandomParams:
    """Uniform random subset, re-drawn at every selection, unit weights."""

    fraction: float = param(0.5, gt=0, le=1, help="budget = round(fraction·N) samples")
    granularity: str = param("batch", choices=("sample", "batch"), help="draw samples or whole mini-batches")
    batch_size: int | None = param(None, gt=0, le=65_536, help="candidate batch size (null: data.batch_size)")
    per_class: bool = param(False, help="draw within each class, proportionally to its size")


@dataclass
class CraigParams(RandomParams):
    """CRAIG: facility location on squared gradient distances (lazy greedy)."""

    features: str = param("weights", choices=("weights", "bias"),
                          help="last-layer gradient: bias and weights, or the bias part only")
    chunk_size: int = param(4096, gt=0, le=10**7, help="rows per distance block (memory bound)")
    greedy: str = param("lazy", choices=("lazy", "stochastic"),
                        help="lazy: the exact greedy sequence; stochastic: best of a random sample per step, "
                             "E[F] >= (1-1/e-epsilon)·OPT, O(n² ln(1/epsilon)) work at any budget")
    epsilon: float = param(0.01, gt=0, lt=1, help="stochastic greedy's ε (sample (n/k)·ln(1/ε) per step)")
    attack: dict[str, Any] | None = param(
        None, help="attack for the selection features only, e.g. {name: pgd, steps: 2} (null: the training "
                   "attack, as in the paper); unset keys come from the training attack")


@dataclass
class GradMatchParams(RandomParams):
    """GradMatch: OMP matching the full gradient sum, non-negative ridge weights."""

    features: str = param("weights", choices=("weights", "bias"),
                          help="last-layer gradient: bias and weights, or the bias part only")
    lam: float = param(0.0, ge=0, le=1e6, help="ridge regularisation of the OMP weights")
    solver: str = param("fast", choices=("fast", "exact"),
                        help="fast: batch OMP with Lawson–Hanson refits (scales to 50k candidates, any budget); "
                             "exact: one atom per round (the reference; its memory grows as budget²)")
    surplus: str = param("match", choices=("match", "fill"),
                         help="slots left once the match is exact (budget beyond the feature dimension): "
                              "match = uniform picks at weight 1 and OMP matches the rest, exactly k kept exact; "
                              "fill = random fill at the picks' mean weight (solver=exact always fills)")
    attack: dict[str, Any] | None = param(
        None, help="attack for the selection features only, e.g. {name: pgd, steps: 2} (null: the training "
                   "attack, as in the paper); unset keys come from the training attack")


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


def _candidates(rows: Tensor, features: Tensor, granularity: str, batch_size: int, whole: bool,
                generator: torch.Generator) -> tuple[Tensor, Candidates]:
    """Candidates of one group, and the group's sample indices ordered candidate by candidate.

    Batch-wise: a fresh random partition ``rows[randperm(len(rows))]`` cut into consecutive
    batches of ``batch_size`` (the last one may be short); candidate b is the mean of its members.
    """
    device = features.device
    if granularity == "sample":
        feats = features if whole else features[rows.to(device)]
        sizes = torch.ones(len(rows), dtype=torch.long)
        return rows, Candidates(feats, sizes, feats.sum(dim=0, dtype=torch.float64), 1)
    order = rows[torch.randperm(len(rows), generator=generator)]
    n_batches = math.ceil(len(order) / batch_size)
    sizes = torch.full((n_batches,), batch_size, dtype=torch.long)
    sizes[-1] = len(order) - batch_size * (n_batches - 1)
    owner = torch.repeat_interleave(torch.arange(n_batches), sizes).to(device)
    sums = torch.zeros(n_batches, features.shape[1], dtype=features.dtype, device=device)
    sums.index_add_(0, owner, features[order.to(device)])
    means = sums / sizes.to(device=device, dtype=features.dtype)[:, None]
    target = sums.sum(dim=0, dtype=torch.float64) / batch_size
    return order, Candidates(means, sizes, target, batch_size)


def _fill(picked: Tensor, weights: Tensor, sizes: Tensor, budget: int,
          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Top up a short pick with random unpicked candidates until it holds ``budget`` samples.

    OMP may stop early (residual matched, no positively correlated atom left, a rank-deficient
    group). Filling keeps the coreset size — and so the cost of a coreset epoch — what the recipe
    asked for. Fill samples get the mean per-sample weight of the solver's picks, and then the whole
    group is rescaled so that its total weight stays what the solver gave it (≈ the group's size).
    The picks keep their relative weights and fill samples sit on the same scale, neither dominating
    nor vanishing in Σγℓ/Σγ; and a class whose OMP stopped early does not gain weight against the
    other classes (which weighting fill samples 1, as the reference does, or at the mean weight
    without rescaling would do). With no pick at all, the fill samples share the group's size.
    """
    have = int(sizes[picked].sum())
    free = torch.ones(len(sizes), dtype=torch.bool)
    free[picked] = False
    free_idx = torch.nonzero(free).flatten()
    if have >= budget or len(free_idx) == 0:
        return picked, weights
    drawn = free_idx[torch.randperm(len(free_idx), generator=generator)]
    take = min(len(drawn), int(torch.searchsorted(torch.cumsum(sizes[drawn], 0), budget - have)) + 1)
    extra = drawn[:take]
    added = int(sizes[extra].sum())
    mass = float(weights.sum()) if have else float(sizes.sum())  # the group's total weight, kept
    per_sample = mass / (have + added)
    weights = torch.cat([weights * (have / (have + added)), per_sample * sizes[extra].to(weights.dtype)])
    return torch.cat([picked, extra]), weights


def _expand(order: Tensor, sizes: Tensor, picked: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Sample indices of the picked candidates, each sample with an equal share of its candidate's weight."""
    owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    chosen = torch.zeros(len(sizes), dtype=torch.bool)
    chosen[picked] = True
    per_sample = torch.zeros(len(sizes), dtype=torch.float64)
    per_sample[picked] = weights / sizes[picked].to(torch.float64)
    keep = chosen[owner]
    return order[keep], per_sample[owner][keep]


def _select_group(rows: Tensor, features: Tensor, budget: int, solver: Solver, granularity: str,
                  batch_size: int, whole: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Select ``budget`` samples of one group of sample ``rows``: (sample indices, per-sample weights)."""
    if budget <= 0 or len(rows) == 0:
        return rows[:0], torch.zeros(0, dtype=torch.float64)
    order, cands = _candidates(rows, features, granularity, batch_size, whole, generator)
    n_picks = min(len(cands.sizes), math.ceil(budget / cands.batch_size))
    picked, weights = solver(cands, n_picks, generator)
    picked, weights = _fill(picked.cpu().long(), weights.cpu().double(), cands.sizes, budget, generator)
    return _expand(order, cands.sizes, picked, weights)


def select_with(solver: Solver, params: RandomParams, features: Tensor, labels: Tensor, *,
                generator: torch.Generator, batch_size: int,
                solve_groups: Callable[[list[Tensor], list[int]], list[tuple[Tensor, Tensor]]] | None = None
                ) -> Coreset:
    """Run ``solver`` over the groups and granularity the params ask for.

    ``solve_groups`` (features of each group, picks of each) solves all groups in one call at sample
    granularity instead of ``solver`` one group at a time; sample candidates draw nothing from the
    generator, so the result is the same.
    """
    labels = labels.cpu()
    n = len(labels)
    if len(features) != n:
        raise ValueError(f"{len(features)} feature rows for {n} labels")
    budget = max(1, round(params.fraction * n))
    candidate_batch = params.batch_size or batch_size
    if params.per_class:
        classes = torch.unique(labels).tolist()
        groups = [torch.nonzero(labels == c).flatten() for c in classes]
        budgets = class_budgets([len(g) for g in groups], budget)
    else:
        groups, budgets = [torch.arange(n)], [budget]
    whole = not params.per_class
    if solve_groups is not None and params.granularity == "sample":
        live = [(rows, min(k, len(rows))) for rows, k in zip(groups, budgets, strict=True) if k > 0 and len(rows)]
        solved = iter(solve_groups([features if whole else features[r.to(features.device)] for r, _ in live],
                                   [k for _, k in live]))
        solver = lambda c, k, gen: next(solved)  # noqa: E731 (_select_group calls it on the live groups, in order)
    parts = [_select_group(rows, features, k, solver, params.granularity, candidate_batch, whole, generator)
             for rows, k in zip(groups, budgets, strict=True)]
    indices = torch.cat([p[0] for p in parts])
    weights = torch.cat([p[1] for p in parts])
    order = torch.argsort(indices)
    return Coreset(indices[order], weights[order].float())


class Selector(ABC):
    """A selector built from its params: ``selector(features, labels, generator=..., batch_size=...)``
    gives the weighted :class:`Coreset`. ``batch_size`` is the data's, the default candidate size."""

    #: False for selectors that use only the labels: the selection pass then attacks nothing.
    needs_features = True
    #: False for a selector that keeps every sample (``full``): the loop then never runs a selection pass.
    selects = True

    def __init__(self, params: Any) -> None:
        self.params = params

    @property
    def bias_only(self) -> bool:
        """Score on the last layer's bias gradient only (``features: bias``)."""
        return getattr(self.params, "features", "weights") == "bias"

    @abstractmethod
    def __call__(self, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Coreset:
        """The weighted coreset of the samples whose ``features`` and ``labels`` are given."""


class SolverSelector(Selector):
    """A selector that runs a solver over the groups and granularity its params ask for (:func:`select_with`)."""

    def __call__(self, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Coreset:
        return select_with(self.solve, self.params, features, labels, generator=generator, batch_size=batch_size)

    @abstractmethod
    def solve(self, c: Candidates, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Pick ``k`` of the candidates ``c``: (candidate positions, weight of each pick in samples)."""


@SELECTORS.register("full")
class FullSelector(Selector):
    """Every sample, unit weights (plain adversarial training)."""

    needs_features = False
    selects = False

    def __call__(self, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Coreset:
        return Coreset(torch.arange(len(labels)), torch.ones(len(labels)))


@SELECTORS.register("random", RandomParams)
class RandomSelector(SolverSelector):
    """Uniformly random subset, re-drawn at every selection, unit weights."""

    needs_features = False

    def __call__(self, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Coreset:
        coreset = super().__call__(features, labels, generator=generator, batch_size=batch_size)
        coreset.weights = torch.ones_like(coreset.weights)
        return coreset

    def solve(self, c: Candidates, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randperm(len(c.sizes), generator=gen)[: max(0, min(k, len(c.sizes)))]
        return idx, c.sizes[idx].double()


@SELECTORS.register("craig", CraigParams)
class CraigSelector(SolverSelector):
    """Adversarial CRAIG: facility location on last-layer gradient features."""

    #: Per-class lazy greedy of all classes at once without a host sync per pick
    #: (:mod:`advtrain.selection.solvers.craig_batched`, the same picks); None: on for CUDA features.
    device_greedy: bool | None = None

    def __call__(self, features: Tensor, labels: Tensor, *, generator: torch.Generator,
                 batch_size: int) -> Coreset:
        batched = self.device_greedy if self.device_greedy is not None else features.is_cuda
        together = batched and self.params.greedy == "lazy"
        return select_with(self.solve, self.params, features, labels, generator=generator, batch_size=batch_size,
                           solve_groups=self._solve_groups if together else None)

    def _solve_groups(self, feats: list[Tensor], ks: list[int]) -> list[tuple[Tensor, Tensor]]:
        return facility_location_groups(feats, ks, chunk_size=self.params.chunk_size)

    def solve(self, c: Candidates, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        # Batches count by their size, so a pick's weight is the number of samples it represents.
        mult = c.sizes if c.batch_size > 1 else None
        eps = self.params.epsilon if self.params.greedy == "stochastic" else None
        return facility_location(c.features, k, chunk_size=self.params.chunk_size, sample_weight=mult,
                                 stochastic_eps=eps, generator=gen, device_greedy=self.device_greedy)


@SELECTORS.register("gradmatch", GradMatchParams)
class GradMatchSelector(SolverSelector):
    """Adversarial GradMatch: OMP on last-layer gradient features."""

    def solve(self, c: Candidates, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        params = self.params
        try:
            if params.solver == "exact":
                idx, w = orthogonal_matching_pursuit(c.features, k, lam=params.lam, target=c.target)
            else:
                # A candidate's share of the target: 1 per sample, size/B for a batch (a short one counts less).
                share = c.sizes.to(torch.float64) / c.batch_size
                idx, w = batch_omp(c.features, k, lam=params.lam, target=c.target, generator=gen,
                                   surplus="match" if params.surplus == "match" else "none", sample_weight=share)
        except FactorTooLarge as err:
            raise UserError(_factor_advice(err, params)) from None
        return idx, w.double() * c.batch_size  # coefficient on the target's scale → samples


def _factor_advice(err: FactorTooLarge, params: GradMatchParams) -> str:
    """The solver's memory refusal in recipe terms: which selector settings would fit."""
    fixes = []
    if err.solver == "exact":
        fixes.append("selector.solver=fast (its factor stays within the feature dimension)")
    if err.ridge:
        fixes.append(f"selector.lam=0 (now {params.lam}; the support then stays within the feature dimension)")
    if params.granularity == "sample":
        fixes.append("selector.granularity=batch")
    if not params.per_class:
        fixes.append("selector.per_class=true")
    return f"{err}; use {', '.join(fixes) or 'a smaller selector.fraction'}"
