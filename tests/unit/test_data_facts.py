"""Dataset facts (what validation checks recipes against) agree with what the builders produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advtrain.data import DATASETS
from advtrain.data.facts import DATA_FACTS, data_facts
from advtrain.errors import DataError


def _folder(root: Path) -> Path:
    for split, per_class in (("train", 5), ("val", 1)):
        for cls, n in (("cat", per_class), ("dog", per_class + 2)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, train_x=rng.integers(0, 256, (30, 5, 5), dtype=np.uint8), train_y=np.arange(30) % 4 // 3,
             test_x=rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), test_y=np.arange(6) % 2)
    return path


CASES = {
    "digits": lambda tmp: {"val_fraction": 0.3},
    "synthetic": lambda tmp: {"n_train": 37, "num_classes": 5, "val_fraction": 0.2, "channels": 1},
    "arrays": lambda tmp: {"path": str(_npz(tmp / "a.npz")), "val_fraction": 0.25},
    "imagefolder": lambda tmp: {"root": str(_folder(tmp)), "image_size": 4, "val_fraction": 0.3},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_facts_agree_with_the_built_bundle(name, tmp_path):
    entry = DATASETS.get(name)
    params = entry.params(**CASES[name](tmp_path))
    facts, data = data_facts(name, params), entry.build(params)
    assert facts.image_shape == data.image_shape and facts.num_classes == data.num_classes
    assert list(facts.train_counts) == torch.bincount(data.train.labels, minlength=data.num_classes).tolist()


def test_every_dataset_has_facts():
    assert sorted(DATA_FACTS) == DATASETS.names()


def test_facts_refuse_what_the_builder_refuses(tmp_path):
    params = DATASETS.get("cifar10").params(root=str(tmp_path), download=False)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        data_facts("cifar10", params)
    with pytest.raises(DataError, match="SVHN not found"):
        data_facts("svhn", DATASETS.get("svhn").params(root=str(tmp_path)))
    with pytest.raises(DataError, match="holds out all 4 training images"):
        data_facts("synthetic", DATASETS.get("synthetic").params(n_train=4, num_classes=2, val_fraction=0.9))
    # with download: true nothing is read; the facts are CIFAR's own
    facts = data_facts("cifar100", DATASETS.get("cifar100").params(root=str(tmp_path), download=True,
                                                                   val_fraction=0.1))
    assert facts.image_shape == (3, 32, 32) and facts.train_counts == (450,) * 100
    assert not any(tmp_path.iterdir())
