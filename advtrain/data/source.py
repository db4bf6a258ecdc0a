"""Where images come from: uint8 arrays in memory, or image files in class folders.

Both sources yield ``(x, y, index)`` so that coresets, per-sample adversarial points and weights
stay aligned with the rows they were computed on, and both offer ``load(indices)`` for a whole batch.
Images come out as float in [0,1]; normalisation belongs to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from advtrain.errors import DataError


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 images → float32 in [0, 1], bit-identical on every device.

    A 256-entry table computed on the CPU (``k / 255``, correctly rounded; 1 KiB, copied without a
    host sync) replaces the division: CUDA divides by a scalar through its reciprocal, which differs from the CPU's
    ``k / 255`` in the last bit for some ``k``, so the same batch would differ between devices.
    """
    table = torch.arange(256, dtype=torch.float32).div_(255).to(images.device, non_blocking=True)
    return table[images.long()]


class ArraySource(Dataset):
    """A dataset held in memory as uint8 (N×C×H×W) images and int64 labels.

    Keeping uint8 (not float) is 4× smaller and makes a batch one indexing operation.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return to_unit_float(self.images[i]), int(self.labels[i]), int(i)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def load(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Images ``indices`` as float in [0,1] on ``device`` (moved as uint8, converted there).

        Host→device copies are ``non_blocking``: from pageable memory CUDA stages the bytes before
        returning, and a blocking copy would make PyTorch wait for the GPU's whole queue.
        """
        rows = indices.to(self.images.device, non_blocking=True)
        return to_unit_float(self.images[rows].to(device, non_blocking=True))

    def labels_of(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Labels of ``indices`` on ``device`` (gathered on the CPU, copied without a host sync)."""
        return self.labels[indices.cpu()].to(device, non_blocking=True)

    def subset(self, indices: Tensor) -> ArraySource:
        """A new source holding rows ``indices`` (re-indexed from 0)."""
        indices = indices.long().cpu()
        return ArraySource(self.images[indices], self.labels[indices])

    def to_device(self, device: torch.device | str) -> ArraySource:
        """The same images resident on ``device`` (still uint8): a batch is then one on-device gather.

        Labels stay on the CPU, where the bookkeeping indices live.
        """
        return ArraySource(self.images.to(device), self.labels)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class FolderSource(Dataset):
    """Image files decoded on access with standard ImageNet evaluation preprocessing.

    Each image is converted to RGB, its shorter side resized to ``round(image_size·256/224)`` and
    center-cropped to ``image_size`` (so 224 → resize 256, crop 224).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: int) -> None:
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.image_size = image_size
        self.labels = torch.tensor([y for _, y in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _read(self, i: int) -> Tensor:
        path = self.samples[i][0]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot decode image '{path}' ({err}); remove or replace the file") from err
        img = TF.resize(img, round(self.image_size * 256 / 224), interpolation=TF.InterpolationMode.BILINEAR)
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return to_unit_float(self._read(i)), self.samples[i][1], int(i)

    def load(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Decode ``indices`` into one float [0,1] batch on ``device``."""
        batch = torch.stack([self._read(int(i)) for i in indices.cpu()]) if len(indices) else \
            torch.empty((0, *self.image_shape), dtype=torch.uint8)
        return to_unit_float(batch.to(device, non_blocking=True))

    def subset(self, indices: Tensor) -> FolderSource:
        """A new source holding samples ``indices`` (re-indexed from 0)."""
        return FolderSource([self.samples[int(i)] for i in indices.cpu()], self.image_size)


#: Either kind of source; both offer ``len``, ``[i]``, ``labels``, ``load`` and ``subset``.
Source = ArraySource | FolderSource
