"""What a dataset holds, found cheaply: image shape, classes and per-class training counts.

Recipe validation compares these facts with the rest of the recipe (the model's classes and
input size, a per-class selector's batch) before anything is built or trained. Each function
opens only what it must (array headers and labels, a folder listing, known constants) and runs
the same checks as the dataset's builder, so a missing or malformed dataset is refused by
``advtrain validate`` with the words ``advtrain run`` would use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advtrain.data.arrays import read_npz_facts
from advtrain.data.bundle import split_counts
from advtrain.data.datasets import (
    ArraysParams,
    CifarParams,
    DigitsParams,
    ImageFolderParams,
    LoaderParams,
    SvhnParams,
    SyntheticParams,
    check_synthetic_fits,
    check_training_left,
    image_folder_samples,
    torchvision_not_found,
)


@dataclass(frozen=True)
class DataFacts:
    """The facts of a dataset that the rest of a recipe must agree with.

    Attributes:
        image_shape: C×H×W of every image.
        num_classes: Number of classes.
        train_counts: Per-class sizes of the training split (after the validation split), or None
            when they are not known without reading the whole dataset.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    train_counts: tuple[int, ...] | None


def _counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.long(), minlength=num_classes).tolist()


def _facts(params: LoaderParams, image_shape: tuple[int, int, int], num_classes: int,
           counts: list[int] | None) -> DataFacts:
    """Facts after the validation split, refusing a split that leaves nothing to train on."""
    if counts is None:
        return DataFacts(image_shape, num_classes, None)
    left = split_counts(counts, params.val_fraction)
    check_training_left(params, sum(counts), sum(left))
    return DataFacts(image_shape, num_classes, tuple(left))


def digits_facts(params: DigitsParams) -> DataFacts:
    from sklearn.datasets import load_digits

    counts = _counts(torch.from_numpy(load_digits().target), 10)
    return _facts(params, (1, 8, 8), 10, split_counts(counts, params.test_fraction))


def _cifar_facts(params: CifarParams, num_classes: int, title: str) -> DataFacts:
    import torchvision

    if params.path is not None:
        npz = read_npz_facts(params.path, image_shape=(3, 32, 32), num_classes=num_classes)
        return _facts(params, npz.image_shape, npz.num_classes, _counts(npz.train_labels, num_classes))
    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    folder = Path(params.root).expanduser() / cls.base_folder
    if not params.download and not all((folder / name).is_file() for name, _ in cls.train_list + cls.test_list):
        raise torchvision_not_found(cls, params.root, title, has_path=True)
    return _facts(params, (3, 32, 32), num_classes, [50_000 // num_classes] * num_classes)  # balanced train set


def cifar10_facts(params: CifarParams) -> DataFacts:
    return _cifar_facts(params, 10, "CIFAR-10")


def cifar100_facts(params: CifarParams) -> DataFacts:
    return _cifar_facts(params, 100, "CIFAR-100")


def svhn_facts(params: SvhnParams) -> DataFacts:
    import torchvision

    cls = torchvision.datasets.SVHN
    root = Path(params.root).expanduser()
    if not params.download and not all((root / cls.split_list[s][1]).is_file() for s in ("train", "test")):
        raise torchvision_not_found(cls, params.root, "SVHN", has_path=False)
    return _facts(params, (3, 32, 32), 10, None)  # per-class counts live in the 180 MB .mat file


def imagefolder_facts(params: ImageFolderParams) -> DataFacts:
    train, _, classes = image_folder_samples(params.root)
    counts = _counts(torch.tensor([y for _, y in train]), len(classes))
    return _facts(params, (3, params.image_size, params.image_size), len(classes), counts)


def arrays_facts(params: ArraysParams) -> DataFacts:
    npz = read_npz_facts(params.path, num_classes=params.num_classes)
    return _facts(params, npz.image_shape, npz.num_classes, _counts(npz.train_labels, npz.num_classes))


def synthetic_facts(params: SyntheticParams) -> DataFacts:
    check_synthetic_fits(params)
    k, n = params.num_classes, params.n_train
    counts = [n // k + (1 if c < n % k else 0) for c in range(k)]  # labels are arange(n) % k, shuffled
    return _facts(params, (params.channels, params.image_size, params.image_size), k, counts)


#: Dataset name → its facts function (a dataset without one is checked only when it is built).
DATA_FACTS: dict[str, Callable[[Any], DataFacts]] = {
    "digits": digits_facts, "cifar10": cifar10_facts, "cifar100": cifar100_facts, "svhn": svhn_facts,
    "imagefolder": imagefolder_facts, "arrays": arrays_facts, "synthetic": synthetic_facts,
}


def data_facts(name: str, params: Any) -> DataFacts | None:
    """The facts of dataset ``name`` with ``params`` (raises its DataError), or None when unknown."""
    facts = DATA_FACTS.get(name)
    return facts(params) if facts is not None else None
