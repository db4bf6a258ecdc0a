"""Rank-one last-layer structure: detected only where it holds, and the solvers' results do not change."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import nnls

from advtrain.objectives.lastlayer import cross_entropy_grads, trades_grads
from advtrain.selection.gram import last_layer_factors
from advtrain.selection.solvers import batch_omp, facility_location


def _ce_features(n: int, classes: int = 10, hidden: int = 24, seed: int = 0, confident: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 3
    y = torch.randint(0, classes, (n,), generator=gen)
    if confident:  # some rows predicted with certainty: e rounds to exactly 0 in float32
        logits[: n // 4] = -200.0
        logits[torch.arange(n // 4), y[: n // 4]] = 200.0
    emb = torch.relu(torch.randn(n, hidden, generator=gen))
    return cross_entropy_grads(logits, emb, y)


@pytest.mark.parametrize("confident", [False, True])
def test_factors_of_cross_entropy_features_rebuild_them_and_their_gram(confident):
    g = _ce_features(300, confident=confident)
    factors = last_layer_factors(g)
    assert factors is not None and factors.e.shape == (300, 10) and factors.h_hat.shape == (300, 25)
    assert torch.allclose(factors.dense(), g.double(), rtol=1e-6, atol=1e-7)
    exact = g.double() @ g.double().T
    assert torch.allclose(factors.gram(factors), exact, rtol=1e-5, atol=1e-6)
    assert torch.allclose(factors.sq_norms(), exact.diagonal(), rtol=1e-5, atol=1e-6)


def test_real_model_selection_features_are_detected():
    """What a training run hands the solvers (the objective's Danskin features) takes the fast path."""
    from advtrain.models import build_model
    from advtrain.objectives.objectives import AdversarialObjective

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_chans=1, mean=(0.5,), std=(0.25,))
    model.eval()
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 3, (40,))
    g = AdversarialObjective.selection_features(None, model, x, y, x)
    factors = last_layer_factors(g)
    assert factors is not None and factors.e.shape == (40, 3)
    assert factors.h_hat.shape[1] == model.embedding_dim + 1


def test_other_features_are_left_dense():
    gen = torch.Generator().manual_seed(1)
    assert last_layer_factors(torch.randn(200, 10 * 25, generator=gen)) is None  # arbitrary rows
    g = _ce_features(256)
    assert last_layer_factors(g.view(32, 8, -1).mean(dim=1)) is None  # batch means: sums of rank-one rows
    logits, adv = torch.randn(64, 10, generator=gen), torch.randn(64, 10, generator=gen)
    emb, adv_emb = torch.rand(64, 24, generator=gen), torch.rand(64, 24, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    assert last_layer_factors(trades_grads(logits, emb, adv, adv_emb, y, 6.0)) is None  # two-sided (rank two)
    assert last_layer_factors(cross_entropy_grads(logits, emb, y, bias_only=True)) is None
    g[200, 12] += 1e-2  # one row off the structure, after the probe rows
    assert last_layer_factors(g) is None


def _craig_cost(g: torch.Tensor, idx: torch.Tensor) -> float:
    """Σ_i min_{j∈S} ‖g_i − g_j‖², the quantity CRAIG's greedy decreases (float64, brute force)."""
    return float(torch.cdist(g.double(), g[idx].double()).pow(2).min(dim=1).values.sum())


@pytest.mark.parametrize("seed", range(3))
def test_craig_on_factors_reaches_the_dense_float64_objective(seed):
    g = _ce_features(400, seed=seed)
    fast = facility_location(g, 30)
    reference = facility_location(g.double(), 30, structure=False)
    # Exactly tied gains exist in these features (seed 0 swaps two tied picks), so the objective is
    # compared, as for the float32 dense path.
    assert _craig_cost(g, fast[0]) == pytest.approx(_craig_cost(g, reference[0]), rel=1e-9)
    assert float(fast[1].sum()) == pytest.approx(400)


def test_craig_on_factors_without_the_dense_matrix():
    g = _ce_features(300, seed=4)
    on_demand = facility_location(g, 20, max_dense_elems=0)
    reference = facility_location(g.double(), 20, structure=False)
    assert _craig_cost(g, on_demand[0]) == pytest.approx(_craig_cost(g, reference[0]), rel=1e-9)


@pytest.mark.parametrize("budget", [40, 200, 400])
def test_gradmatch_on_factors_matches_like_the_dense_path_and_is_nnls_on_its_support(budget):
    g = _ce_features(500, hidden=16, seed=budget)
    b = g.sum(dim=0, dtype=torch.float64)

    def error(idx, w):
        return float((w.double() @ g[idx].double() - b).norm() / b.norm())

    fast = batch_omp(g, budget, generator=torch.Generator().manual_seed(0))
    dense = batch_omp(g, budget, generator=torch.Generator().manual_seed(0), structure=False)
    assert error(*fast) <= error(*dense) + 0.01
    assert len(fast[0]) <= budget and (fast[1] > 0).all()
    support = fast[0][: min(len(fast[0]), 170)]  # the OMP support comes first (surplus draws after it)
    if budget <= 170:
        solution, _ = nnls(g[support].double().numpy().T, b.numpy())
        assert torch.allclose(fast[1].double(), torch.from_numpy(solution), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("structure", [True, False])
def test_budget_beyond_a_rank_deficient_feature_set_stays_matched_and_full(structure):
    """Cross-entropy features have rank (C − 1)(H + 1) < D (the softmax residual sums to zero), so an exact
    support leaves slots however often surplus draws are re-matched; the draws of the last pass used to
    be returned unmatched (relative error ~1e-2 at CIFAR-10 scale). Now the support grows to the rank and
    the remaining draws ride on it: exact, full, every weight positive."""
    g = _ce_features(3000, classes=10, hidden=20, seed=5)  # D = 210, rank 189
    b = g.sum(dim=0, dtype=torch.float64)
    idx, w = batch_omp(g, 1500, generator=torch.Generator().manual_seed(0), structure=structure)
    assert len(idx) == 1500 and len(set(idx.tolist())) == 1500 and bool((w > 0).all())
    error = float((w.double() @ g[idx].double() - b).norm() / b.norm())
    assert error < 1e-5
