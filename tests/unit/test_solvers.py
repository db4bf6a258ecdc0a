"""Coreset solvers against independent oracles (brute force, scipy NNLS)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import nnls

from advtrain.selection.solvers import facility_location, orthogonal_matching_pursuit


def _objective(x: torch.Tensor, chosen: list[int]) -> float:
    """Facility-location value with similarity C − d (C = max pairwise squared distance)."""
    d = torch.cdist(x.double(), x.double()) ** 2
    c = float(d.max())
    return float((c - d[:, chosen]).max(dim=1).values.sum())


def _brute_force_greedy(x: torch.Tensor, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        best = max((j for j in range(len(x)) if j not in chosen),
                   key=lambda j: (round(_objective(x, chosen + [j]), 9), -j))
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_equals_brute_force_greedy(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=gen)
    idx, _ = facility_location(x, 4)
    assert idx.tolist() == _brute_force_greedy(x, 4)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_reaches_the_submodular_guarantee(seed):
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.randn(10, 2, generator=gen)
    idx, _ = facility_location(x, 3)
    best = max(_objective(x, list(s)) for s in itertools.combinations(range(10), 3))
    assert _objective(x, idx.tolist()) >= (1 - 1 / torch.e) * best - 1e-9


def test_on_demand_path_equals_dense_path():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen)
    dense = facility_location(x, 7)
    streamed = facility_location(x, 7, chunk_size=5, max_dense_elems=10)
    assert torch.equal(dense[0], streamed[0])
    assert torch.equal(dense[1], streamed[1])


def test_weights_count_represented_points_and_duplicates_collapse():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([centers[0].repeat(5, 1), centers[1].repeat(3, 1), centers[2].repeat(2, 1)])
    idx, w = facility_location(x, 3)
    by_center = {tuple(x[int(i)].tolist()): float(v) for i, v in zip(idx, w, strict=True)}
    assert by_center == {(0.0, 0.0): 5.0, (10.0, 0.0): 3.0, (0.0, 10.0): 2.0}
    assert float(w.sum()) == len(x)


def test_budget_at_least_n_returns_everything():
    idx, w = facility_location(torch.randn(5, 2), 9)
    assert idx.tolist() == list(range(5)) and w.tolist() == [1.0] * 5


def test_omp_matches_nnls_on_an_exactly_representable_target():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    target = 2.0 * g[3] + 1.0 * g[7]
    idx, w = orthogonal_matching_pursuit(g, 5, target=target)
    solution, _ = nnls(g.numpy().T, target.numpy())
    support = sorted(int(i) for i in (solution > 1e-9).nonzero()[0])
    assert sorted(idx.tolist()) == support == [3, 7]
    got = dict(zip(idx.tolist(), w.tolist(), strict=True))
    assert got[3] == pytest.approx(solution[3], abs=1e-6) and got[7] == pytest.approx(solution[7], abs=1e-6)


def test_omp_weights_nonnegative_and_ridge_shrinks():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(40, 8, generator=gen)
    idx, w = orthogonal_matching_pursuit(g, 6)
    assert (w > 0).all() and len(idx) <= 6 and len(set(idx.tolist())) == len(idx)
    _, w_ridge = orthogonal_matching_pursuit(g, 6, lam=100.0)
    assert float(w_ridge.sum()) < float(w.sum())


def test_omp_stops_when_target_is_matched():
    g = torch.eye(6, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 6, target=torch.tensor([0, 0, 3.0, 0, 0, 0], dtype=torch.float64))
    assert idx.tolist() == [2] and w.tolist() == pytest.approx([3.0])


def test_omp_default_target_is_the_gradient_sum():
    gen = torch.Generator().manual_seed(2)
    g = torch.rand(20, 4, generator=gen, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 20)
    approx = (w[:, None] * g[idx]).sum(0)
    assert torch.allclose(approx, g.sum(0), atol=1e-6)
