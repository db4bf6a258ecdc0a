"""Selectors: budgets, per-class split, batch-wise mapping, determinism."""

from __future__ import annotations

import pytest
import torch

from advtrain.selection import SELECTORS, class_budgets
from advtrain.selection.selectors import CraigParams, GradMatchParams, RandomParams


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(name, params, feats, labels, seed=0, batch_size=4):
    return SELECTORS.get(name).build(params)(feats, labels, generator=_gen(seed), batch_size=batch_size)


def _partition(rows: torch.Tensor, batch_size: int, seed: int) -> list[list[int]]:
    """The documented batch partition: rows[randperm(len(rows))] cut into consecutive batches."""
    perm = rows[torch.randperm(len(rows), generator=_gen(seed))]
    return [b.tolist() for b in perm.split(batch_size)]


def _is_union_of_batches(indices: torch.Tensor, batches: list[list[int]]) -> bool:
    chosen = set(indices.tolist())
    return all(set(b) <= chosen or not set(b) & chosen for b in batches)


def test_class_budgets_add_up_and_are_proportional():
    assert class_budgets([50, 30, 20], 10) == [5, 3, 2]
    assert class_budgets([5, 3, 2], 5) == [3, 1, 1]  # raw 2.5, 1.5, 1.0: ties by class order
    assert sum(class_budgets([7, 5, 3, 1], 9)) == 9
    assert class_budgets([7, 5, 3, 1], 9)[3] >= 1
    assert class_budgets([3, 3], 100) == [3, 3]
    assert class_budgets([4, 0, 4], 2) == [1, 0, 1]


def test_class_budgets_invariants_on_random_cases():
    gen = _gen(7)
    for _ in range(300):
        counts = torch.randint(0, 30, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen).tolist()
        total = sum(counts)
        budget = int(torch.randint(1, max(total, 1) + 5, (1,), generator=gen))
        out = class_budgets(counts, budget)
        nonempty = [i for i, c in enumerate(counts) if c]
        assert sum(out) == min(budget, total)
        assert all(0 <= o <= c for o, c in zip(out, counts, strict=True))
        if budget >= len(nonempty):
            assert all(out[i] >= 1 for i in nonempty)
        raw = [min(budget, total) * c / max(total, 1) for c in counts]
        if all(r >= 1 for r, c in zip(raw, counts, strict=True) if c):  # no class lifted to its minimum
            assert all(abs(o - r) < 1 for o, r in zip(out, raw, strict=True))


@pytest.mark.parametrize("name,params", [
    ("random", RandomParams(fraction=0.3, granularity="sample", per_class=True)),
    ("craig", CraigParams(fraction=0.3, granularity="sample", per_class=True)),
    ("gradmatch", GradMatchParams(fraction=0.3, granularity="sample", per_class=True)),
])
def test_per_class_budgets(name, params):
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 10)
    feats = torch.randn(40, 5, generator=_gen(1))
    sel = _run(name, params, feats, labels)
    assert len(sel.indices) == 12
    counts = torch.bincount(labels[sel.indices], minlength=3).tolist()
    assert counts == [6, 3, 3]
    assert (sel.weights > 0).all()
    assert torch.equal(sel.indices, torch.sort(sel.indices).values)


def test_batch_wise_selects_whole_batches_with_their_own_samples():
    # Three tight clusters; the batch partition is random, so build the features after drawing it:
    # give every sample of one particular batch a gradient equal to the full-data target.
    n, bsz = 24, 4
    labels = torch.zeros(n, dtype=torch.long)
    perm = torch.randperm(n, generator=_gen(5))
    special = perm[8:12]  # the third batch of the partition the selector will draw with seed 5
    feats = torch.zeros(n, 3)
    feats[:, 0] = 1.0
    feats[special] = torch.tensor([0.0, 5.0, 0.0])
    params = GradMatchParams(fraction=4 / 24, granularity="batch", batch_size=bsz)
    sel = _run("gradmatch", params, feats, labels, seed=5)
    assert sorted(sel.indices.tolist()) == sorted(special.tolist())
    assert torch.allclose(sel.weights, sel.weights[0].expand_as(sel.weights))


def test_batch_wise_gradmatch_weight_counts_the_samples_a_batch_stands_for():
    # Five batches with mean (1, 0), one with mean (1, 1): target Σg/B = (6, 1); OMP picks the
    # special batch, w = ⟨a, b⟩/‖a‖² = 7/2, and each member gets B·w/|b| = 3.5.
    n, bsz = 24, 4
    special = _partition(torch.arange(n), bsz, seed=3)[4]
    feats = torch.zeros(n, 2)
    feats[:, 0] = 1.0
    feats[special] = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # mean (1, 1)
    sel = _run("gradmatch", GradMatchParams(fraction=4 / 24, batch_size=bsz), feats,
               torch.zeros(n, dtype=torch.long), seed=3)
    assert sel.indices.tolist() == sorted(special)
    assert sel.weights.tolist() == pytest.approx([3.5] * 4)


def test_batch_wise_craig_picks_the_medoid_batch_with_its_represented_samples():
    # Five batches sit on distinct points around a sixth, short batch (2 samples, mean 0): the
    # short batch is the medoid even though it counts for 2 samples, represents all 22, and its
    # two members carry 11 each (Σγ = n).
    n, bsz = 22, 4
    batches = _partition(torch.arange(n), bsz, seed=9)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 2]
    feats = torch.zeros(n, 2)
    for b, point in zip(batches[:5], [(2.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (0.0, -2.0), (1.0, 1.0)], strict=True):
        feats[b] = torch.tensor(point)
    feats[batches[5]] = torch.tensor([[0.5, -0.25], [-0.5, 0.25]])  # members differ, the mean is 0
    sel = _run("craig", CraigParams(fraction=1 / 22, batch_size=bsz), feats, torch.zeros(n, dtype=torch.long),
               seed=9)
    assert sel.indices.tolist() == sorted(batches[5])
    assert sel.weights.tolist() == [11.0, 11.0]


@pytest.mark.parametrize("name,params", [
    ("craig", CraigParams(fraction=1.0, batch_size=4)),
    ("gradmatch", GradMatchParams(fraction=1.0, batch_size=4)),
])
def test_batch_wise_full_budget_gives_unit_weights_even_for_the_short_batch(name, params):
    feats = torch.rand(22, 8, generator=_gen(2))
    sel = _run(name, params, feats, torch.zeros(22, dtype=torch.long), seed=1)
    assert sel.indices.tolist() == list(range(22))
    assert sel.weights.tolist() == pytest.approx([1.0] * 22, abs=1e-5)


def test_per_class_batch_wise_uses_whole_batches_inside_each_class():
    labels = torch.tensor([0, 1] * 15 + [2] * 10)  # 15 / 15 / 10 samples
    feats = torch.randn(40, 5, generator=_gen(4))
    params = CraigParams(fraction=0.5, batch_size=3, per_class=True)
    sel = _run("craig", params, feats, labels, seed=6)
    # class budgets 8 / 7 / 5 → ceil(k/3) = 3 / 3 / 2 whole batches of 3 samples
    assert torch.bincount(labels[sel.indices], minlength=3).tolist() == [9, 9, 6]
    gen = _gen(6)
    for c in range(3):
        rows = torch.nonzero(labels == c).flatten()
        batches = [b.tolist() for b in rows[torch.randperm(len(rows), generator=gen)].split(3)]
        assert _is_union_of_batches(sel.indices[labels[sel.indices] == c], batches)
    assert float(sel.weights.sum()) == pytest.approx(40)


def test_batch_partition_is_fresh_per_seed_and_reproducible():
    labels = torch.zeros(40, dtype=torch.long)
    feats = torch.randn(40, 6, generator=_gen(0))
    params = CraigParams(fraction=0.25, granularity="batch", batch_size=5)
    a, b, c = (_run("craig", params, feats, labels, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.indices, c.indices)
    assert len(a.indices) == 10


def test_craig_sample_weights_sum_to_n():
    feats = torch.randn(30, 4, generator=_gen(3))
    sel = _run("craig", CraigParams(fraction=0.2, granularity="sample"), feats, torch.zeros(30, dtype=torch.long))
    assert len(sel.indices) == 6 and float(sel.weights.sum()) == pytest.approx(30)


def test_full_and_random():
    labels = torch.arange(10) % 2
    full = _run("full", None, torch.zeros(10, 2), labels)
    assert full.indices.tolist() == list(range(10)) and full.weights.tolist() == [1.0] * 10
    params = RandomParams(fraction=0.5, granularity="sample")
    r1, r2 = _run("random", params, torch.zeros(10, 2), labels, seed=1), _run("random", params, torch.zeros(10, 2),
                                                                             labels, seed=2)
    assert len(r1.indices) == 5 and (r1.weights == 1).all()
    assert not torch.equal(r1.indices, r2.indices)
    assert torch.equal(r1.indices, _run("random", params, torch.zeros(10, 2), labels, seed=1).indices)
    every = _run("random", RandomParams(fraction=1.0, granularity="sample"), torch.zeros(3, 2), labels[:3])
    assert every.indices.tolist() == [0, 1, 2] and every.weights.tolist() == [1.0] * 3


def test_only_full_keeps_every_sample_without_selecting():
    # The loop asks ``selects`` (not the name) whether a coreset epoch ever runs a selection pass.
    selects = {name: SELECTORS.get(name).constructor.selects for name in SELECTORS.names()}
    assert selects == {name: name != "full" for name in SELECTORS.names()}


def test_random_is_redrawn_at_every_call_and_batch_wise_draws_whole_batches():
    gen = _gen(0)
    params = RandomParams(fraction=0.25, batch_size=4)
    feats, labels = torch.zeros(24, 2), torch.zeros(24, dtype=torch.long)
    selector = SELECTORS.get("random").build(params)
    first = selector(feats, labels, generator=gen, batch_size=8)
    second = selector(feats, labels, generator=gen, batch_size=8)
    assert not torch.equal(first.indices, second.indices)
    assert len(first.indices) == 8 and first.weights.tolist() == [1.0] * 8
    assert _is_union_of_batches(first.indices, _partition(torch.arange(24), 4, seed=0))


def test_gradmatch_short_selection_is_filled_to_budget():
    feats = torch.zeros(20, 3)
    feats[:, 0] = 1.0  # every atom identical: OMP matches the target with one atom of weight 20
    sel = _run("gradmatch", GradMatchParams(fraction=0.5, granularity="sample", surplus="fill"), feats,
               torch.zeros(20, dtype=torch.long))
    assert len(sel.indices) == 10 and len(set(sel.indices.tolist())) == 10
    # the pick (weight 20) and the 9 fill samples share its weight: mean per-sample weight, total kept
    assert sel.weights.tolist() == pytest.approx([2.0] * 10)


def test_fill_keeps_each_class_weight_when_omp_stops_early():
    # Class 0: ten identical gradients (OMP stops after 1 atom); class 1: two directions (2 atoms).
    # Both are filled to 5 samples; each class keeps the total weight OMP gave it (its size, 10).
    feats = torch.zeros(20, 3)
    feats[:10, 0] = 1.0
    feats[10:15, 1] = 1.0
    feats[15:, 2] = 1.0
    labels = torch.tensor([0] * 10 + [1] * 10)
    sel = _run("gradmatch", GradMatchParams(fraction=0.5, granularity="sample", per_class=True), feats, labels)
    assert torch.bincount(labels[sel.indices]).tolist() == [5, 5]
    mass = [float(sel.weights[labels[sel.indices] == c].sum()) for c in (0, 1)]
    assert mass == pytest.approx([10.0, 10.0])


def test_batch_wise_fill_adds_whole_batches():
    feats = torch.zeros(24, 3)
    feats[:, 0] = 1.0  # one batch matches the target: it stands for all 24 samples
    sel = _run("gradmatch", GradMatchParams(fraction=0.5, batch_size=4, surplus="fill"), feats,
               torch.zeros(24, dtype=torch.long), seed=8)
    assert len(sel.indices) == 12 and _is_union_of_batches(sel.indices, _partition(torch.arange(24), 4, seed=8))
    assert sel.weights.tolist() == pytest.approx([2.0] * 12)  # total 24 = n, spread over 3 batches


@pytest.mark.parametrize("name", ["craig", "gradmatch"])
@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_selection_is_deterministic_for_a_seed(name, granularity):
    feats = torch.randn(30, 6, generator=_gen(11))
    labels = torch.arange(30) % 3
    cls = CraigParams if name == "craig" else GradMatchParams
    params = cls(fraction=0.4, granularity=granularity, batch_size=3, per_class=True)
    a, b = (_run(name, params, feats, labels, seed=4) for _ in range(2))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    assert a.weights.dtype == torch.float32 and a.indices.dtype == torch.int64
    assert torch.equal(a.indices, torch.unique(a.indices)) and (a.weights > 0).all()


def test_feature_rows_must_match_labels():
    with pytest.raises(ValueError, match="feature rows"):
        _run("craig", CraigParams(), torch.zeros(5, 2), torch.zeros(6, dtype=torch.long))


def _relative_mismatch(sel, feats: torch.Tensor) -> float:
    target = feats.double().sum(0)
    approx = sel.weights.double() @ feats[sel.indices].double()
    return float((approx - target).norm() / target.norm())


def test_gradmatch_budget_beyond_the_dimension_keeps_the_match_with_surplus_match():
    # k = 20 samples > D = 3: OMP matches exactly with ≤ 3 atoms. surplus=match draws the other
    # samples at weight 1 (each stands for itself) and matches the rest; surplus=fill (and the exact
    # solver) top up at random and rescale, which loses the match.
    feats = torch.randn(40, 3, generator=_gen(12)) + 0.5
    labels = torch.zeros(40, dtype=torch.long)
    match = _run("gradmatch", GradMatchParams(fraction=0.5, granularity="sample"), feats, labels)
    fill = _run("gradmatch", GradMatchParams(fraction=0.5, granularity="sample", surplus="fill"), feats, labels)
    exact = _run("gradmatch", GradMatchParams(fraction=0.5, granularity="sample", solver="exact"), feats, labels)
    assert len(match.indices) == len(fill.indices) == len(exact.indices) == 20
    assert _relative_mismatch(match, feats) < 1e-5
    assert _relative_mismatch(fill, feats) > 1e-3 and _relative_mismatch(exact, feats) > 1e-3
    assert int((match.weights == 1).sum()) >= 20 - 3 and (match.weights > 0).all()


def test_craig_stochastic_greedy_is_reproducible_and_weights_sum_to_n():
    feats = torch.randn(60, 4, generator=_gen(13))
    labels = torch.arange(60) % 2
    params = CraigParams(fraction=0.25, granularity="sample", per_class=True, greedy="stochastic", epsilon=0.1)
    a, b = (_run("craig", params, feats, labels, seed=3) for _ in range(2))
    assert torch.equal(a.indices, b.indices) and len(a.indices) == 15
    assert float(a.weights.sum()) == 60
    lazy = _run("craig", CraigParams(fraction=0.25, granularity="sample", per_class=True), feats, labels, seed=3)
    assert len(lazy.indices) == 15 and not torch.equal(lazy.indices, a.indices)


@pytest.mark.parametrize("solver, lam, named",
                         [("exact", 0.0, "selector.solver=fast"), ("fast", 0.5, "selector.lam=0")])
def test_gradmatch_memory_refusal_names_the_selector_settings_that_fit(solver, lam, named):
    """The solvers refuse in plain numbers (FactorTooLarge); the selector words it in recipe keys."""
    from advtrain.errors import UserError

    feats = torch.empty(50_000, 5_130, device="meta")  # no storage: nothing may be copied before the check
    params = GradMatchParams(fraction=0.5, granularity="sample", solver=solver, lam=lam)
    with pytest.raises(UserError, match=named) as err:
        SELECTORS.get("gradmatch").build(params)(feats, torch.zeros(50_000, dtype=torch.long),
                                                 generator=torch.Generator().manual_seed(0), batch_size=128)
    assert "selector.granularity=batch" in str(err.value) and "GiB" in str(err.value)
