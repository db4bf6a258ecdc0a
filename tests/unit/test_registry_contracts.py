"""One contract per registry, parametrized over every registered entry (as timm's test_models does).

A new attack, evaluation preset, objective or selector is covered the moment it is registered: it
must build from its defaults, run on a tiny model (or tiny features), and respect its bound. No
hand-kept list of names decides what is tested.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from advtrain.attacks import ATTACKS
from advtrain.attacks.presets import GROUPS, list_eval_presets, resolve_eval_attack
from advtrain.models import build_model
from advtrain.objectives import OBJECTIVES
from advtrain.selection import SELECTORS, Coreset

TOL = 1e-6
#: Concrete preset names (not the grammar rows). The ``-alexnet``/``-vgg``/``-squeeze`` variants of the
#: perceptual presets are the ``self`` preset with a distance network whose ImageNet weights come from the
#: torch hub cache (absent offline); tests/unit/test_perceptual_eval.py covers the network choice.
EVAL_NAMES = [name for name, _ in list_eval_presets() if name.replace("-", "").replace("_", "").isalnum()
              and name not in GROUPS and not name.endswith(("-alexnet", "-vgg", "-squeeze"))]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _ball_size(delta: torch.Tensor, norm: str) -> float:
    flat = delta.flatten(1)
    return float((flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)).max())


def _quick(params: object) -> object:
    """Defaults with a small step budget, so every entry runs in milliseconds."""
    if params is not None and any(f.name == "steps" for f in dataclasses.fields(params)):
        return dataclasses.replace(params, steps=2)
    return params


def test_every_registry_has_entries():
    for registry in (ATTACKS, OBJECTIVES, SELECTORS):
        assert registry.names(), registry.kind
    assert EVAL_NAMES and {"clean", "pgd20", "aa"} <= set(EVAL_NAMES)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_builds_from_defaults_and_stays_in_its_bound(name):
    entry = ATTACKS.get(name)
    attack = entry.build(_quick(entry.default_params()))
    model, (x, y) = _model(), _batch()
    model.train()
    x_adv = attack(model, x, y)
    assert model.training, f"{name} left the model in eval mode"
    assert all(p.grad is None for p in model.parameters()), f"{name} left parameter gradients"
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    params = attack.params
    if hasattr(params, "norm") and hasattr(params, "eps"):  # an ℓp ball
        assert _ball_size(x_adv - x, params.norm) <= params.eps + TOL
    else:  # a perceptual attack penalises (not projects) its LPIPS bound: it must at least move
        assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("name", EVAL_NAMES)
def test_eval_preset_builds_runs_and_stays_in_its_bound(name):
    attack = resolve_eval_attack(name, steps=None if name in ("clean", "fgsm") else 2)
    model, (x, y) = _model(), _batch(4)
    model.train()
    x_adv = attack.run(model, x, y)
    assert model.training and x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    if attack.norm in ("linf", "l2"):
        assert _ball_size(x_adv - x, attack.norm) <= attack.eps + TOL
    elif attack.family == "clean":
        assert torch.equal(x_adv, x)


def _objective(name: str):
    entry = OBJECTIVES.get(name)
    allowed = entry.constructor.attacks
    attack = None
    if allowed:
        attack_entry = ATTACKS.get(allowed[0])
        attack = attack_entry.build(_quick(attack_entry.default_params()))
    return entry.build(entry.default_params(), attack=attack), attack


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_builds_from_defaults_and_gives_per_sample_losses_and_features(name):
    objective, attack = _objective(name)
    model, (x, y) = _model(), _batch()
    model.train()
    out = objective.loss(model, x, y)
    assert out.losses.shape == (len(y),) and bool(torch.isfinite(out.losses).all())
    assert out.logits.shape == (len(y), 4)
    out.losses.mean().backward()  # the loss reaches the weights
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    points = objective.selection_points(model, x, y)
    assert model.training and points.shape == x.shape
    params = getattr(attack, "params", None)
    if hasattr(params, "norm") and hasattr(params, "eps"):
        assert _ball_size(points - x, params.norm) <= params.eps + TOL
    feats = objective.selection_features(model, x, y, points)
    assert feats.dim() == 2 and feats.shape[0] == len(y) and bool(torch.isfinite(feats).all())


@pytest.mark.parametrize("name", SELECTORS.names())
def test_selector_builds_from_defaults_and_returns_a_valid_coreset(name):
    entry = SELECTORS.get(name)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 5, generator=g)
    selector = entry.build(entry.default_params())
    coreset = selector(features, labels, generator=torch.Generator().manual_seed(1), batch_size=4)
    assert isinstance(coreset, Coreset)
    indices, weights = coreset.indices, coreset.weights
    assert indices.dtype == torch.int64 and weights.dtype == torch.float32 and len(indices) == len(weights)
    assert bool((indices[1:] > indices[:-1]).all()), "indices must be ascending and unique"
    assert int(indices.min()) >= 0 and int(indices.max()) < len(labels)
    assert bool((weights > 0).all())
    fraction = getattr(entry.default_params(), "fraction", 1.0)
    assert len(indices) >= round(fraction * len(labels))  # the budget is met (batch-wise may exceed it)
