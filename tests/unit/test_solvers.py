"""Coreset solvers against independent oracles (brute force, scipy NNLS)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from advtrain.selection.solvers import (
    FactorTooLarge,
    batch_omp,
    cholesky,
    facility_location,
    omp_exact,
    orthogonal_matching_pursuit,
)


def _objective(x: torch.Tensor, chosen: list[int], mult: torch.Tensor | None = None) -> float:
    """Facility-location value Σ_i m_i max_{j∈S} (C − d_ij) (C = max pairwise squared distance)."""
    d = torch.cdist(x.double(), x.double()) ** 2
    c = float(d.max())
    m = torch.ones(len(x), dtype=torch.float64) if mult is None else mult.double()
    return float((m * (c - d[:, chosen]).max(dim=1).values).sum())


def _brute_force_greedy(x: torch.Tensor, k: int, mult: torch.Tensor | None = None) -> list[int]:
    """Plain greedy: evaluate F for every candidate at every step (ties → smallest index)."""
    chosen: list[int] = []
    for _ in range(k):
        best = max((j for j in range(len(x)) if j not in chosen),
                   key=lambda j: (round(_objective(x, chosen + [j], mult), 9), -j))
        chosen.append(best)
    return chosen


def _nearest_mass(x: torch.Tensor, chosen: list[int], mult: torch.Tensor | None = None) -> list[float]:
    """Oracle weights: each point's multiplicity goes to its nearest chosen element (earliest on ties)."""
    d = torch.cdist(x.double(), x.double()) ** 2
    m = torch.ones(len(x)) if mult is None else mult
    out = [0.0] * len(chosen)
    for i in range(len(x)):
        slot = chosen.index(i) if i in chosen else min(range(len(chosen)), key=lambda s: (float(d[i, chosen[s]]), s))
        out[slot] += float(m[i])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_equals_brute_force_greedy(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=gen)
    idx, w = facility_location(x, 4)
    assert idx.tolist() == _brute_force_greedy(x, 4)
    assert w.tolist() == _nearest_mass(x, idx.tolist())
    assert float(w.sum()) == 12


@pytest.mark.parametrize("seed", range(3))
def test_weighted_lazy_greedy_equals_brute_force_greedy(seed):
    # Multiplicities (candidate batch sizes) weigh each point's term in F and its representation.
    gen = torch.Generator().manual_seed(20 + seed)
    x = torch.randn(11, 3, generator=gen)
    mult = torch.randint(1, 6, (11,), generator=gen).float()
    idx, w = facility_location(x, 4, sample_weight=mult)
    assert idx.tolist() == _brute_force_greedy(x, 4, mult)
    assert w.tolist() == pytest.approx(_nearest_mass(x, idx.tolist(), mult))
    assert float(w.sum()) == pytest.approx(float(mult.sum()))
    streamed = facility_location(x, 4, sample_weight=mult, chunk_size=3, max_dense_elems=5)
    assert torch.equal(idx, streamed[0]) and torch.equal(w, streamed[1])


def test_multiplicity_changes_the_pick():
    # Two far-apart points: unweighted the tie goes to index 0; a heavier point 1 wins instead.
    x = torch.tensor([[0.0], [10.0]])
    assert facility_location(x, 1)[0].tolist() == [0]
    idx, w = facility_location(x, 1, sample_weight=torch.tensor([1.0, 3.0]))
    assert idx.tolist() == [1] and w.tolist() == [4.0]
    with pytest.raises(ValueError, match="non-negative"):
        facility_location(x, 1, sample_weight=torch.tensor([1.0, -1.0]))


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


def test_duplicates_collapse_in_the_on_demand_path():
    x = torch.cat([torch.tensor([[1.0, 2.0, 3.0]]).repeat(4, 1), torch.tensor([[-5.0, 0.0, 1.0]]).repeat(6, 1)])
    idx, w = facility_location(x, 2, chunk_size=3, max_dense_elems=1)
    assert sorted(w.tolist()) == [4.0, 6.0] and idx.tolist() == [4, 0]


def test_budget_at_least_n_returns_everything():
    idx, w = facility_location(torch.randn(5, 2), 9)
    assert idx.tolist() == list(range(5)) and w.tolist() == [1.0] * 5
    _, w = facility_location(torch.randn(3, 2), 3, sample_weight=torch.tensor([2.0, 1.0, 4.0]))
    assert w.tolist() == [2.0, 1.0, 4.0]  # every element represents only itself


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


@pytest.mark.parametrize("seed", range(4))
def test_omp_matches_nnls_on_random_sparse_nonnegative_targets(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    g = torch.randn(15, 40, generator=gen, dtype=torch.float64)
    support = torch.randperm(15, generator=gen)[:3]
    coef = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    target = coef @ g[support]
    idx, w = orthogonal_matching_pursuit(g, 8, target=target)
    solution, _ = nnls(g.numpy().T, target.numpy())
    assert sorted(idx.tolist()) == sorted(support.tolist()) == sorted(np.nonzero(solution > 1e-9)[0].tolist())
    assert w.numpy() == pytest.approx(solution[idx.numpy()], abs=1e-6)


def test_omp_prunes_negative_weights_and_keeps_going(monkeypatch):
    # A case (found by search) where refitting makes an earlier atom negative: it is pruned and
    # banned, and OMP continues instead of stopping. The result is NNLS on its own support.
    pruned = []
    remove = omp_exact._IncrementalRidge.remove
    monkeypatch.setattr(omp_exact._IncrementalRidge, "remove",
                        lambda self, pos: (pruned.append(self.atoms[pos]), remove(self, pos))[1])
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    target = torch.randn(4, generator=gen, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 4, target=target)
    assert pruned and not set(pruned) & set(idx.tolist())
    assert len(idx) == 3 and (w > 0).all()
    solution, _ = nnls(g[idx].numpy().T, target.numpy())
    assert w.numpy() == pytest.approx(solution, abs=1e-9)


def test_omp_signed_weights_when_nonnegative_is_off():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 5, target=2.0 * g[3] - 1.5 * g[7], nonnegative=False)
    assert dict(zip(idx.tolist(), w.tolist(), strict=True)) == pytest.approx({3: 2.0, 7: -1.5}, abs=1e-9)


def test_omp_ridge_weights_solve_the_regularised_normal_equations():
    gen = torch.Generator().manual_seed(5)
    g = torch.rand(12, 20, generator=gen, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 4, lam=3.0)
    a = g[idx].numpy()
    expected = np.linalg.solve(a @ a.T + 3.0 * np.eye(len(idx)), a @ g.sum(0).numpy())
    assert w.numpy() == pytest.approx(expected, abs=1e-9)


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


# --- fast paths against the exact references --------------------------------------------------


def _matching_error(g: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> float:
    approx = w.double() @ g[idx].double()
    return float((approx - target.double()).norm() / target.double().norm())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(300, 40, 25), (400, 60, 50)])
def test_batch_omp_matches_within_one_percent_of_exact_omp(seed, shape):
    n, d, k = shape
    gen = torch.Generator().manual_seed(200 + seed)
    g = torch.randn(n, d, generator=gen) + 0.2
    target = g.sum(0, dtype=torch.float64)
    exact = orthogonal_matching_pursuit(g, k, target=target)
    fast = batch_omp(g, k, target=target, rounds=8, surplus="none")
    assert len(fast[0]) <= k and (fast[1] > 0).all() and len(set(fast[0].tolist())) == len(fast[0])
    assert _matching_error(g, *fast, target) <= _matching_error(g, *exact, target) + 0.01


@pytest.mark.parametrize("seed", range(3))
def test_batch_omp_weights_are_nnls_on_their_support(seed):
    gen = torch.Generator().manual_seed(300 + seed)
    g = torch.randn(120, 30, generator=gen, dtype=torch.float64)
    target = torch.randn(30, generator=gen, dtype=torch.float64) + g.sum(0) / 10
    idx, w = batch_omp(g, 20, target=target, rounds=4, surplus="none")
    solution, _ = nnls(g[idx].numpy().T, target.numpy())
    assert w.numpy() == pytest.approx(solution, abs=1e-8)
    assert (solution > 0).all()  # every kept atom is active in the NNLS optimum of its support


def test_batch_omp_one_atom_per_round_is_exact_omp_on_an_exact_target():
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(15, 40, generator=gen, dtype=torch.float64)
    support = torch.tensor([2, 9, 11])
    target = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) @ g[support]
    idx, w = batch_omp(g, 8, target=target, rounds=8, surplus="none")  # ⌈8/8⌉ = 1 atom per round
    ref_idx, ref_w = orthogonal_matching_pursuit(g, 8, target=target)
    assert idx.tolist() == ref_idx.tolist() and sorted(idx.tolist()) == [2, 9, 11]
    assert w.numpy() == pytest.approx(ref_w.numpy(), abs=1e-9)


def test_batch_omp_ridge_weights_solve_the_regularised_normal_equations():
    gen = torch.Generator().manual_seed(5)
    g = torch.rand(40, 20, generator=gen, dtype=torch.float64)
    idx, w = batch_omp(g, 6, lam=3.0, surplus="none")
    a = g[idx].numpy()
    expected = np.linalg.solve(a @ a.T + 3.0 * np.eye(len(idx)), a @ g.sum(0).numpy())
    assert w.numpy() == pytest.approx(expected, abs=1e-9)


def test_budget_beyond_the_dimension_is_matched_exactly_with_uniform_surplus():
    # D = 12 < k = 60: OMP needs at most 12 atoms for an exact match; with surplus="match" the other
    # slots are uniform draws that stand for themselves (weight 1) and OMP matches the rest of the target.
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(200, 12, generator=gen) + 0.5
    target = g.sum(0, dtype=torch.float64)
    idx, w = batch_omp(g, 60, target=target, generator=torch.Generator().manual_seed(0))
    assert len(idx) == 60 and len(set(idx.tolist())) == 60 and (w > 0).all()
    assert _matching_error(g, idx, w, target) < 1e-5
    assert int((w == 1).sum()) >= 60 - 12
    alone, w_alone = batch_omp(g, 60, target=target, surplus="none")
    assert len(alone) <= 12 and _matching_error(g, alone, w_alone, target) < 1e-5
    again = batch_omp(g, 60, target=target, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again[0]) and torch.equal(w, again[1])


def test_batch_omp_rejects_an_unknown_surplus_rule():
    with pytest.raises(ValueError, match="surplus"):
        batch_omp(torch.randn(5, 3), 2, surplus="random")


def test_memory_is_checked_before_anything_is_copied():
    # Meta tensors have no storage: a solver that copied or reduced them first would fail differently.
    feats = torch.empty(50_000, 5_130, device="meta")
    with pytest.raises(FactorTooLarge, match="25000×25000") as err:
        orthogonal_matching_pursuit(feats, 25_000)
    assert err.value.solver == "exact" and "selector" not in str(err.value)  # the math speaks no recipe
    with pytest.raises(FactorTooLarge, match="25000×25000") as err:
        batch_omp(feats, 25_000, lam=0.5)
    assert err.value.ridge and "selector" not in str(err.value)


def test_factor_row_deletion_equals_refactorising():
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(7, 10, generator=gen, dtype=torch.float64)
    gram = a @ a.T
    low = cholesky._lower(7, torch.device("cpu"))
    low[:] = torch.linalg.cholesky(gram)
    for q in (0, 3, 6):
        keep = [i for i in range(7) if i != q]
        expected = torch.linalg.cholesky(gram[keep][:, keep])
        assert torch.allclose(cholesky._delete_factor_row(low, q), expected, atol=1e-12)


def test_exact_omp_may_bring_back_an_atom_pruned_after_others_joined(monkeypatch):
    # Banning every pruned atom forever made large budgets 1.9× worse; only an atom pruned right
    # after its own addition is banned. Here an atom pruned later is picked again and kept.
    pruned, added = [], []
    remove, add = omp_exact._IncrementalRidge.remove, omp_exact._IncrementalRidge.add
    monkeypatch.setattr(omp_exact._IncrementalRidge, "remove",
                        lambda self, pos: (pruned.append(self.atoms[pos]), remove(self, pos))[1])
    monkeypatch.setattr(omp_exact._IncrementalRidge, "add",
                        lambda self, j, row: (added.append(j), add(self, j, row))[1])
    gen = torch.Generator().manual_seed(36)  # found by search: atom 7 is pruned, then picked again
    g = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    idx, w = orthogonal_matching_pursuit(g, 8, target=torch.randn(8, generator=gen, dtype=torch.float64))
    back = [j for j in set(pruned) if added.count(j) > 1]
    assert back == [7] and 7 in idx.tolist() and (w > 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_float32_lazy_greedy_has_the_float64_objective(seed):
    gen = torch.Generator().manual_seed(400 + seed)
    x = torch.randn(80, 16, generator=gen, dtype=torch.float64)
    fast, _ = facility_location(x.float(), 12, lazy_batch=3)
    exact, _ = facility_location(x, 12)
    assert _objective(x, fast.tolist()) == pytest.approx(_objective(x, exact.tolist()), rel=1e-9)


def test_lazy_batch_does_not_change_the_greedy_sequence():
    x = torch.randn(90, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    runs = [facility_location(x, 20, lazy_batch=b) for b in (1, 8, 1000)]
    assert all(torch.equal(runs[0][0], r[0]) and torch.equal(runs[0][1], r[1]) for r in runs[1:])


@pytest.mark.parametrize("seed", range(3))
def test_stochastic_greedy_reaches_its_guarantee_and_is_reproducible(seed):
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(10 + seed))
    best = max(_objective(x, list(s)) for s in itertools.combinations(range(10), 3))
    values = []
    for r in range(5):
        idx, w = facility_location(x, 3, stochastic_eps=0.1, generator=torch.Generator().manual_seed(r))
        assert len(set(idx.tolist())) == 3 and float(w.sum()) == 10
        values.append(_objective(x, idx.tolist()))
    assert sum(values) / len(values) >= (1 - 1 / torch.e - 0.1) * best - 1e-9
    again, _ = facility_location(x, 3, stochastic_eps=0.1, generator=torch.Generator().manual_seed(0))
    assert again.tolist() == facility_location(x, 3, stochastic_eps=0.1,
                                               generator=torch.Generator().manual_seed(0))[0].tolist()
    with pytest.raises(ValueError, match="stochastic_eps"):
        facility_location(x, 3, stochastic_eps=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_surplus_draws_of_the_last_pass_are_matched_too(seed):
    """Rank-deficient features (rank 60 < D = 100) whose match turns exact before the support reaches the
    rank leave slots at every pass; the draws of the last pass were returned unmatched (5.6e-2 against a
    tolerance of 1e-2 on seed 0). The support now grows to the rank and the last draws ride on it."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2000, 60, generator=gen) @ torch.randn(60, 100, generator=gen)
    b = g.sum(dim=0, dtype=torch.float64)
    idx, w = batch_omp(g, 1000, tol=1e-2, generator=torch.Generator().manual_seed(0))
    assert len(idx) == 1000 and len(set(idx.tolist())) == 1000 and bool((w > 0).all())
    assert float((w.double() @ g[idx].double() - b).norm() / b.norm()) <= 1e-2
