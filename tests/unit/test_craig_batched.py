"""The batched, sync-free lazy greedy gives the host loop's picks and weights (and the brute-force greedy's)."""

from __future__ import annotations

import pytest
import torch

from advtrain.selection import SELECTORS
from advtrain.selection.selectors import CraigParams
from advtrain.selection.solvers import craig, craig_batched, facility_location, facility_location_groups


def _host(x, k, m=None, **kw):
    return facility_location(x, k, sample_weight=m, device_greedy=False, **kw)


def _brute_force(x: torch.Tensor, k: int) -> list[int]:
    """Plain greedy on Σ_i min_{j∈S} d_ij, every candidate at every step, ties to the smallest index."""
    d = ((x.double()[:, None] - x.double()[None]) ** 2).sum(dim=-1)  # exact on integers (cdist is not)
    cur = torch.full((len(x),), float(d.max()), dtype=torch.float64)
    chosen: list[int] = []
    for _ in range(k):
        gains = (cur[:, None] - d).clamp_min(0).sum(dim=0)
        gains[chosen] = -1.0
        j = int(gains.argmax())  # first of equal maxima
        chosen.append(j)
        cur = torch.minimum(cur, d[:, j])
    return chosen


def _assert_same(got, want):
    assert got[0].tolist() == want[0].tolist()
    assert torch.allclose(got[1].double(), want[1].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_groups_equal_the_host_greedy_on_random_problems(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes, ks = (37, 60, 12, 25), (9, 31, 11, 1)
    xs = [torch.randn(n, 4, generator=gen, dtype=torch.float64) for n in sizes]
    ms = [torch.randint(1, 5, (n,), generator=gen).double() for n in sizes]
    for weights in (None, ms):
        got = facility_location_groups(xs, list(ks), sample_weights=weights, refresh=3)
        for g, (x, k) in enumerate(zip(xs, ks, strict=True)):
            want = _host(x, k, None if weights is None else weights[g])
            _assert_same(got[g], want)
        if weights is None:
            assert got[0][0].tolist() == _brute_force(xs[0], ks[0])


def test_refresh_streaming_and_stack_size_do_not_change_the_picks():
    gen = torch.Generator().manual_seed(7)
    xs = [torch.randn(n, 3, generator=gen, dtype=torch.float64) for n in (50, 41)]
    want = [_host(x, 20) for x in xs]
    for kw in ({"refresh": 1}, {"refresh": 1000}, {"max_dense_elems": 10, "chunk_size": 7},
               {"max_stack_elems": 1}):
        for got, ref in zip(facility_location_groups(xs, [20, 20], **kw), want, strict=True):
            _assert_same(got, ref)


def test_exact_ties_go_to_the_smallest_index():
    # Integer grid points with duplicates: squared distances and gains are exact integers, so many
    # gains tie exactly; both greedies must take the first index of the largest gain. 32 rows: the
    # solvers centre the features, and a mean over a power of two stays exact.
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (26, 2), generator=gen).double()
    x = torch.cat([x, x[:6]])  # exact duplicates at the end
    want = _brute_force(x, 12)
    got = facility_location_groups([x, x.flip(0)], [12, 12], refresh=2)
    assert got[0][0].tolist() == want == _host(x, 12)[0].tolist()
    assert got[1][0].tolist() == _brute_force(x.flip(0), 12)
    _assert_same(got[0], _host(x, 12))


def test_k_one_k_n_and_k_zero():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    got = facility_location_groups([x, x, x, x], [1, 8, 9, 0])
    _assert_same(got[0], _host(x, 1))
    _assert_same(got[1], _host(x, 8))
    assert got[2][0].tolist() == list(range(9)) and got[2][1].tolist() == [1.0] * 9
    assert len(got[3][0]) == 0 and len(got[3][1]) == 0
    assert float(got[1][1].sum()) == 9


def test_device_greedy_option_of_facility_location():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(45, 5, generator=gen)  # float32 features, the fast path
    m = torch.rand(45, generator=gen) + 0.5
    _assert_same(facility_location(x, 13, sample_weight=m, device_greedy=True), _host(x, 13, m))


def test_no_host_sync_per_pick(monkeypatch):
    # One host read per block of iterations (a block as long as the picks still owed) and one for the
    # largest distance at the start: far fewer than one per pick.
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dist, mult = craig._prepare(x, None, 4096, 25_000_000, True)
    reads = []
    for name in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _m=method: (reads.append(1), _m(t, *a))[1])
    picks = craig_batched.batched_lazy_greedy([dist], [100], [mult], refresh=16)[0]
    monkeypatch.undo()
    assert picks == _host(x, 100)[0].tolist()
    assert 2 <= len(reads) <= 12


@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_per_class_selector_is_the_same_with_the_batched_greedy(granularity):
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([0] * 23 + [1] * 40 + [2] * 7 + [3] * 1)[torch.randperm(71, generator=gen)]
    feats = torch.randn(71, 6, generator=gen)
    params = CraigParams(fraction=0.3, granularity=granularity, per_class=True, batch_size=4)
    out = []
    for on in (False, True):
        sel = SELECTORS.get("craig").build(params)
        sel.device_greedy = on
        out.append(sel(feats, labels, generator=torch.Generator().manual_seed(0), batch_size=4))
    assert out[0].indices.tolist() == out[1].indices.tolist()
    assert torch.allclose(out[0].weights, out[1].weights, rtol=1e-6, atol=0)
    assert float(out[1].weights.sum()) == pytest.approx(71, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batched_greedy_equals_the_host_loop():
    gen = torch.Generator().manual_seed(8)
    xs = [torch.randn(n, 10, generator=gen, dtype=torch.float64) for n in (300, 257)]
    got = facility_location_groups([x.cuda() for x in xs], [150, 40])
    for (idx, w), x, k in zip(got, xs, (150, 40), strict=True):
        assert idx.is_cuda
        _assert_same((idx.cpu(), w.cpu()), _host(x, k))
