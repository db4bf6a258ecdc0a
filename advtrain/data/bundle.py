"""What a dataset builder returns: the three splits plus everything the model and loop need."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advtrain.data.source import Source


@dataclass
class DataBundle:
    """Train/val/test sources, image facts and the loader settings of the recipe's data section."""

    train: Source
    val: Source
    test: Source
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    augment: str
    padding: int
    batch_size: int
    num_workers: int


def split_validation(source: Source, val_fraction: float, seed: int) -> tuple[Source, Source]:
    """Hold out a seeded, class-stratified ``val_fraction`` of ``source``.

    Stratified so that even a 1% split sees every class in proportion: each class gives
    ``round(n_class · val_fraction)`` samples. Both parts keep the original row order, so the
    split depends only on (labels, fraction, seed). ``val_fraction = 0`` gives an empty val source.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    labels = source.labels
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        take = round(len(members) * val_fraction)
        is_val[members[torch.randperm(len(members), generator=gen)[:take]]] = True
    return source.subset(torch.nonzero(~is_val).flatten()), source.subset(torch.nonzero(is_val).flatten())


def split_counts(counts: list[int], val_fraction: float) -> list[int]:
    """Per-class sizes of the training part that :func:`split_validation` leaves (it holds out
    ``round(n_class · val_fraction)`` of each class whatever the seed)."""
    return [n - round(n * val_fraction) for n in counts]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N×C×H×W images, in [0,1] units.

    Computed from a 256-bin histogram per channel: exact, and no float copy of the dataset.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        p = counts / counts.sum().clamp_min(1)
        mean = float((p * values).sum())
        var = float((p * (values - mean) ** 2).sum())
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-3))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)
