"""Batches of ``(x, y, index)`` with on-device augmentation, reproducible from one generator.

In-memory sources are batched by direct tensor indexing (no DataLoader, no per-sample Python);
image folders go through a DataLoader with a fixed batch order so workers cannot reorder them.
Every random draw of an epoch — the order, the crop offsets and flips — comes from the one
generator passed in, on the CPU, so an epoch is identical on any device given its seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from advtrain.data.source import ArraySource, Source

AUGMENTATIONS = ("none", "crop", "crop_flip")


def random_crop(x: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Crop each image of ``x`` from its zero-padded copy at per-sample ``offsets`` (N×2: row, col).

    Offsets range over ``[0, 2·padding]``; ``padding`` means the image is unmoved.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # N×H
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # N×W
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def draw_augmentation(n: int, mode: str, padding: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """The random crop offsets and flips of ``n`` images, drawn on the CPU from ``generator``."""
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{mode}' (choices: {', '.join(AUGMENTATIONS)})")
    draws: dict[str, Tensor] = {}
    if mode == "none" or n == 0:
        return draws
    if padding > 0:
        draws["offsets"] = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    if mode == "crop_flip":
        draws["flip"] = torch.rand(n, generator=generator) < 0.5
    return draws


def apply_augmentation(x: Tensor, draws: dict[str, Tensor], padding: int) -> Tensor:
    """Apply drawn crops/flips (one row of ``draws`` per image of ``x``) on ``x``'s device."""
    if "offsets" in draws:
        x = random_crop(x, padding, draws["offsets"].to(x.device, non_blocking=True))
    if "flip" in draws:
        x = torch.where(draws["flip"].to(x.device, non_blocking=True)[:, None, None, None], x.flip(3), x)
    return x


def augment_batch(x: Tensor, mode: str, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (zero padding) and/or horizontal flip, per sample, vectorised, on ``x``'s device.

    Args:
        x: Images N×C×H×W in [0,1] on any device.
        mode: ``none``, ``crop`` or ``crop_flip`` (flip with probability 0.5).
        padding: Zero padding of the crop, in pixels.
        generator: A CPU generator; the draws are made on the CPU so results do not depend on the
            device. None uses the global RNG.
    """
    return apply_augmentation(x, draw_augmentation(len(x), mode, padding, generator), padding)


def _batches(indices: Tensor, batch_size: int, shuffle: bool, generator: torch.Generator | None,
             drop_last: bool) -> list[Tensor]:
    indices = indices.long().cpu()
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    chunks = list(indices.split(batch_size))
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


def iterate_batches(source: Source, indices: Tensor, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None, augment: str = "none", padding: int = 4,
                    device: torch.device | str = "cpu", num_workers: int = 0,
                    drop_last: bool = False,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, idx)`` over ``source[indices]``: each index once per pass.

    ``x`` (float [0,1], augmented) and ``y`` are on ``device``; ``idx`` (the source's row indices)
    stays on the CPU for bookkeeping. The order is ``indices`` itself, or a permutation drawn from
    ``generator`` when ``shuffle``; augmentation draws from the same generator afterwards.

    ``shard=(rank, world)`` (data parallel): batches are global batches of ``batch_size``, drawn
    and augmented exactly as in one process, and each rank loads only its contiguous slice of
    every batch; a last batch smaller than ``world`` is dropped so no rank gets an empty one.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    rank, world = shard
    chunks = _batches(indices, batch_size, shuffle, generator, drop_last)
    if world > 1 and chunks and len(chunks[-1]) < world:
        chunks.pop()
    if isinstance(source, ArraySource):
        for idx in chunks:
            draws = draw_augmentation(len(idx), augment, padding, generator)
            if world > 1:
                rows = torch.tensor_split(torch.arange(len(idx)), world)[rank]
                idx, draws = idx[rows], {k: v[rows] for k, v in draws.items()}
            x = source.load(idx, device)
            y = source.labels_of(idx, device)
            yield apply_augmentation(x, draws, padding), y, idx
        return
    plans = []
    for idx in chunks:
        draws = draw_augmentation(len(idx), augment, padding, generator)
        if world > 1:
            rows = torch.tensor_split(torch.arange(len(idx)), world)[rank]
            idx, draws = idx[rows], {k: v[rows] for k, v in draws.items()}
        plans.append((idx, draws))
    loader = DataLoader(source, batch_sampler=[idx.tolist() for idx, _ in plans], num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    for (_, draws), (x, y, idx) in zip(plans, loader, strict=True):
        x = x.to(device, non_blocking=True)
        yield apply_augmentation(x, draws, padding), y.to(device, non_blocking=True), idx.long()
