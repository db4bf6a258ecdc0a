"""Read and validate a user's ``.npz`` of uint8 arrays (``train_x``, ``train_y``, ``test_x``, ``test_y``).

Every problem is reported as a :class:`DataError` naming the file, the key, what was found and
what is expected, since a wrong layout would otherwise surface as a shape error deep in training.
Loaded with ``allow_pickle=False``: a data file never runs code.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advtrain.data.source import ArraySource
from advtrain.errors import DataError

REQUIRED_KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass
class LoadedArrays:
    """Both splits of a validated ``.npz`` file."""

    train: ArraySource
    test: ArraySource
    num_classes: int
    class_names: list[str] | None


def _images(x: np.ndarray, where: str) -> torch.Tensor:
    """N×H×W×C (or N×H×W) uint8/float[0,1] → uint8 N×C×H×W tensor."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3):
            hint = " — it looks channels-first; transpose it with x.transpose(0, 2, 3, 1)"
        raise DataError(f"{where} has shape {x.shape}; expected N×H×W×C with C = 1 or 3 (channels last) or "
                        f"N×H×W for grayscale{hint}")
    if len(x) == 0:
        raise DataError(f"{where} holds no images (shape {x.shape})")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{where} has dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]")
        low, high = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 1):
            raise DataError(f"{where} is float with values in [{low}, {high}]; float images must lie in "
                            "[0, 1] (or store uint8 0..255)")
        x = np.round(x * 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _labels(y: np.ndarray, n: int, where: str) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where} has shape {y.shape}; expected ({n},), one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} has dtype {y.dtype}; expected integer class indices")
    if len(y) and y.min() < 0:
        raise DataError(f"{where} contains the label {int(y.min())}; labels must be 0..num_classes-1")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: str | Path, *, num_classes: int | None = None,
             image_shape: tuple[int, int, int] | None = None) -> LoadedArrays:
    """Load and check ``path``; infer ``num_classes`` as max label + 1 when None.

    Args:
        path: The ``.npz`` file.
        num_classes: Expected number of classes (labels must be below it), or None to infer.
        image_shape: Required C×H×W (e.g. (3, 32, 32) for CIFAR), or None for any consistent shape.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist; data.path must name a .npz with "
                        f"{', '.join(REQUIRED_KEYS)}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not a .npz archive (truncated, or another format); write it with "
                        f"numpy.savez(path, train_x=..., train_y=..., test_x=..., test_y=...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                have = ", ".join(npz.files) or "none"
                raise DataError(f"'{path}' lacks key(s) {', '.join(missing)}; it has {have}"
                                f" and needs {', '.join(REQUIRED_KEYS)} (plus optional 'classes')")
            arrays = {k: npz[k] for k in (*REQUIRED_KEYS, "classes") if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read '{path}' as a .npz of plain arrays ({err}); save it with numpy.savez "
                        "(object arrays are refused because they would need pickle)") from err

    splits = {}
    for split in ("train", "test"):
        images = _images(arrays[f"{split}_x"], f"'{path}' key '{split}_x'")
        labels = _labels(arrays[f"{split}_y"], len(images), f"'{path}' key '{split}_y'")
        splits[split] = ArraySource(images, labels)
    train, test = splits["train"], splits["test"]
    if train.image_shape != test.image_shape:
        raise DataError(f"'{path}': train_x images are {train.image_shape} (C×H×W) but test_x images are "
                        f"{test.image_shape}; both splits need the same size and channels")
    if image_shape is not None and train.image_shape != tuple(image_shape):
        raise DataError(f"'{path}': images are {train.image_shape} (C×H×W) but this dataset needs "
                        f"{tuple(image_shape)}")

    top = int(max(train.labels.max(), test.labels.max() if len(test) else 0))
    if num_classes is None:
        num_classes = top + 1
    for split, source in splits.items():
        if len(source) and int(source.labels.max()) >= num_classes:
            top = int(source.labels.max())
            raise DataError(f"'{path}' key '{split}_y' contains the label {top} but there are {num_classes} "
                            f"classes; labels must be 0..{num_classes - 1} (set data.num_classes or fix the "
                            "labels)")

    names = None
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or len(classes) != num_classes:
            raise DataError(f"'{path}' key 'classes' has shape {classes.shape}; expected ({num_classes},), "
                            "one name per class")
        names = [str(c) for c in classes]
    return LoadedArrays(train, test, num_classes, names)
