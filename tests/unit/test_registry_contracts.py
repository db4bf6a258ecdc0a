"""One contract per registry, parametrized over every registered entry (as timm's test_models does).

A new attack, evaluation preset, objective, selector, optimizer or dataset is covered the moment it
is registered: it must build from its defaults, run on a tiny model (or tiny features / data), and
respect its bound. lr schedules are checked against an independent formula at exact points, and
datasets against a tiny offline instance each, so a new entry without an oracle fails until it gets
one. Models: tests/unit/test_models.py parametrizes over ``MODELS.names()`` the same way.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from advtrain.attacks import ATTACKS
from advtrain.attacks.presets import GROUPS, list_eval_presets, resolve_eval_attack
from advtrain.data.datasets import DATASETS
from advtrain.errors import UserError
from advtrain.models import MODELS, build_model
from advtrain.objectives import OBJECTIVES
from advtrain.optim import LR_SCHEDULES, OPTIMIZERS
from advtrain.selection import SELECTORS, Coreset

TOL = 1e-6
#: Concrete preset names (not the grammar rows). The ``-alexnet``/``-vgg``/``-squeeze`` variants of the
#: perceptual presets are the ``self`` preset with a distance network whose ImageNet weights come from the
#: torch hub cache (absent offline); tests/unit/test_perceptual_eval.py covers the network choice.
EVAL_NAMES = [name for name, _ in list_eval_presets() if name.replace("-", "").replace("_", "").isalnum()
              and name not in (*GROUPS, "clean") and not name.endswith(("-alexnet", "-vgg", "-squeeze"))]


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
    for registry in (ATTACKS, OBJECTIVES, SELECTORS, OPTIMIZERS, LR_SCHEDULES, DATASETS, MODELS):
        assert registry.names(), registry.kind
        assert all(entry.summary for entry in registry.entries()), registry.kind
    assert EVAL_NAMES and {"pgd20", "aa"} <= set(EVAL_NAMES)


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
    if params.threat().is_lp:
        assert _ball_size(x_adv - x, params.threat().metric) <= params.threat().bound + TOL
    else:  # a perceptual attack penalises (not projects) its LPIPS bound: it must at least move
        assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("name", EVAL_NAMES)
def test_eval_preset_builds_runs_and_stays_in_its_bound(name):
    attack = resolve_eval_attack(name, steps=None if name == "fgsm" else 2)
    model, (x, y) = _model(), _batch(4)
    model.train()
    x_adv = attack.run(model, x, y)
    assert model.training and x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    if attack.threat().is_lp:
        assert _ball_size(x_adv - x, attack.threat().metric) <= attack.threat().bound + TOL


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


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_builds_from_defaults_with_its_lr_and_descends(name):
    entry = OPTIMIZERS.get(name)
    params = entry.default_params()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = entry.build(params, model=model)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [params.lr] * len(optimizer.param_groups)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(model(x), y))
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(model(x), y)) < before


#: Each default schedule's lr multiplier, written independently of advtrain.optim.lr, at (epoch, total).
LR_ORACLES = {
    "constant": lambda e, t: 1.0,
    "multistep": lambda e, t: 0.1 ** ((e >= 80) + (e >= 100)),  # milestones [80, 100], gamma 0.1
    "cosine": lambda e, t: 0.5 * (1 + math.cos(math.pi * e / t)),  # min_factor 0
    "cyclic": lambda e, t: (e / t) / 0.4 if e / t <= 0.4 else (1 - e / t) / 0.6,  # peak 0.4
}
LR_POINTS = [(0, 120), (0.5, 120), (30, 120), (48, 120), (79.9, 120), (80, 120), (99.5, 120), (100, 120),
             (119, 120), (3, 10), (7.25, 10)]


def test_every_lr_schedule_has_an_oracle():
    assert set(LR_SCHEDULES.names()) == set(LR_ORACLES)


@pytest.mark.parametrize("name", LR_SCHEDULES.names())
def test_lr_schedule_defaults_give_the_expected_multipliers(name):
    entry = LR_SCHEDULES.get(name)
    factor = entry.build(entry.default_params())
    got = [factor(e, t) for e, t in LR_POINTS]
    assert got == pytest.approx([LR_ORACLES[name](e, t) for e, t in LR_POINTS], rel=1e-12, abs=1e-15)


def _arrays_file(tmp_path) -> dict:
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", train_x=g.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8),
             train_y=np.arange(30) % 3, test_x=g.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8),
             test_y=np.arange(9) % 3)
    return {"path": str(tmp_path / "tiny.npz")}


def _image_folder(tmp_path) -> dict:
    from PIL import Image

    for split, n in (("train", 5), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 12), (40 * i, 200 if c == "cat" else 20, 90)).save(
                    tmp_path / "folder" / split / c / f"{i}.png")
    return {"root": str(tmp_path / "folder"), "image_size": 8}


def _digits_test() -> int:
    """scikit-learn's digits hold out round(n_class · 0.25) of each class as the test set."""
    from sklearn.datasets import load_digits

    return sum(round(int(c) * 0.25) for c in torch.bincount(torch.from_numpy(load_digits().target)))


#: name → (params overrides from tmp_path, expected train+val size, test size, classes, image shape).
#: Torchvision sets (None) are offline here: they must refuse a missing root with a message naming it.
DATASET_CASES = {
    "synthetic": (lambda tmp: {"n_train": 40, "n_test": 8, "num_classes": 4}, 40, 8, 4, (3, 8, 8)),
    "digits": (lambda tmp: {}, lambda: 1797 - _digits_test(), _digits_test, 10, (1, 8, 8)),
    "arrays": (_arrays_file, 30, 9, 3, (3, 6, 6)),
    "imagefolder": (_image_folder, 10, 4, 2, (3, 8, 8)),
    "cifar10": None, "cifar100": None, "svhn": None,
}


def test_every_dataset_has_a_case():
    assert set(DATASETS.names()) == set(DATASET_CASES)


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_builds_its_splits_or_names_what_is_missing(name, tmp_path):
    entry = DATASETS.get(name)
    case = DATASET_CASES[name]
    if case is None:
        missing = tmp_path / "nothing-here"
        params = entry.params(root=str(missing), download=False)
        with pytest.raises(UserError, match=str(missing)):
            entry.build(params)
        return
    overrides, n_train, n_test, classes, shape = case
    n_train, n_test = (n() if callable(n) else n for n in (n_train, n_test))
    params = entry.params(val_fraction=0.2, batch_size=4, **overrides(tmp_path))
    data = entry.build(params)
    assert (data.num_classes, data.image_shape, data.batch_size) == (classes, shape, 4)
    assert len(data.train) + len(data.val) == n_train and len(data.test) == n_test
    assert len(data.val) == sum(round(int(c) * 0.2) for c in torch.bincount(
        torch.cat([data.train.labels, data.val.labels]), minlength=classes))  # stratified, per class
    for split in (data.train, data.val, data.test):
        labels = split.labels
        assert labels.dtype == torch.int64 and int(labels.min()) >= 0 and int(labels.max()) < classes
    assert len(data.mean) == len(data.std) == shape[0] and all(s > 0 for s in data.std)
    assert len(data.class_names) == classes
