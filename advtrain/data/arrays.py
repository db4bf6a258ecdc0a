"""Read and validate a user's ``.npz`` of uint8 arrays (``train_x``, ``train_y``, ``test_x``, ``test_y``).

Every problem is reported as a :class:`DataError` naming the file, the key, what was found and
what is expected, since a wrong layout would otherwise surface as a shape error deep in training.
Loaded with ``allow_pickle=False``: a data file never runs code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advtrain.data.source import ArraySource
from advtrain.errors import DataError

REQUIRED_KEYS = ("train_x", "train_y", "test_x", "test_y")
#: More classes than this is a label typo (or a hostile file), not a dataset.
MAX_CLASSES = 100_000


def memory_limit() -> int:
    """Bytes one in-memory dataset may take: half the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def _check_members(path: Path, limit: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Read each member's .npy header (never its data) and refuse sizes beyond ``limit`` bytes.

    A .npz is a zip: a few kilobytes can declare or decompress to terabytes. The header gives
    shape and dtype; they must agree with the member's stored size, and all members together
    must fit in memory, before numpy allocates anything. Returns each member's (shape, dtype).
    """
    total = 0
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist()]
            twice = sorted({n.removesuffix(".npy") for n in names if names.count(n) > 1})
            if twice:  # numpy would silently read one of them; which one is the zip reader's choice
                raise DataError(f"'{path}' holds key(s) {', '.join(twice[:5])} more than once; a .npz has one "
                                "array per key. Write it again with numpy.savez")
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as handle:
                    try:
                        version = np.lib.format.read_magic(handle)
                        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = reader(handle)
                    except ValueError as err:
                        raise DataError(f"'{path}' key '{name}' is not a plain numpy array ({err}); save the "
                                        "file with numpy.savez") from None
                    header = handle.tell()
                if dtype.hasobject:
                    raise DataError(f"'{path}' key '{name}' holds Python objects (dtype {dtype}); they would "
                                    "need pickle, which advtrain never loads. Store numbers only.")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                total += nbytes
                if total > limit:
                    raise DataError(f"'{path}' decompresses to more than {limit / 2**30:.1f} GiB (key '{name}' "
                                    f"alone declares shape {tuple(shape)} {dtype}, {nbytes / 2**30:.1f} GiB), "
                                    "more than half this machine's memory; use a smaller file or the "
                                    "imagefolder dataset, which reads images from disk")
                if nbytes + header != info.file_size:
                    raise DataError(f"'{path}' key '{name}' declares shape {tuple(shape)} {dtype} "
                                    f"({nbytes} bytes) but holds {info.file_size - header} bytes; the file is "
                                    "corrupt or was not written by numpy.savez")
                headers[name] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"cannot read '{path}' as a .npz archive ({err})") from None
    return headers


@dataclass
class LoadedArrays:
    """Both splits of a validated ``.npz`` file."""

    train: ArraySource
    test: ArraySource
    num_classes: int
    class_names: list[str] | None


def _image_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> tuple[int, int, int]:
    """C×H×W of an N×H×W×C (or N×H×W) image array of ``shape``/``dtype``, or a DataError."""
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        hint = ""
        if len(shape) == 4 and shape[1] in (1, 3):
            hint = " — it looks channels-first; transpose it with x.transpose(0, 2, 3, 1)"
        raise DataError(f"{where} has shape {shape}; expected N×H×W×C with C = 1 or 3 (channels last) or "
                        f"N×H×W for grayscale{hint}")
    if shape[0] == 0:
        raise DataError(f"{where} holds no images (shape {shape})")
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DataError(f"{where} has dtype {dtype}; expected uint8 (0..255) or float in [0, 1]")
    return (shape[3], shape[1], shape[2])


def _images(x: np.ndarray, where: str) -> torch.Tensor:
    """N×H×W×C (or N×H×W) uint8/float[0,1] → uint8 N×C×H×W tensor."""
    _image_layout(x.shape, x.dtype, where)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
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
    if len(y) and int(y.max()) >= MAX_CLASSES:  # checked in the file's own dtype: uint64 would wrap in int64
        top = int(y.max())
        raise DataError(f"{where} contains the label {top}, which would mean {top + 1} classes (at most "
                        f"{MAX_CLASSES}); labels must be 0..num_classes-1 class indices")
    return torch.from_numpy(y.astype(np.int64))


@dataclass
class NpzFacts:
    """What a validated ``.npz`` holds, read without its images: layout, classes and labels."""

    image_shape: tuple[int, int, int]
    num_classes: int
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str] | None


def read_npz_facts(path: str | Path, *, num_classes: int | None = None,
                   image_shape: tuple[int, int, int] | None = None, max_bytes: int | None = None) -> NpzFacts:
    """Every check of :func:`load_npz` that needs no image data: headers, keys, layouts and labels.

    Cheap (array headers and label arrays only), so recipe validation runs it before anything is
    built; :func:`load_npz` runs it too, so both refuse a file with the same words.

    Args:
        path: The ``.npz`` file.
        num_classes: Expected number of classes (labels must be below it), or None to infer.
        image_shape: Required C×H×W (e.g. (3, 32, 32) for CIFAR), or None for any consistent shape.
        max_bytes: Refuse archives whose arrays together exceed this (default: half the memory).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"data file '{path}' is a folder, not a .npz file; data.path must name a .npz with "
                        f"{', '.join(REQUIRED_KEYS)} (for a folder of images use data.name=imagefolder with "
                        f"data.root)")
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist; data.path must name a .npz with "
                        f"{', '.join(REQUIRED_KEYS)}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not a .npz archive (truncated, or another format); write it with "
                        f"numpy.savez(path, train_x=..., train_y=..., test_x=..., test_y=...)")
    headers = _check_members(path, memory_limit() if max_bytes is None else max_bytes)
    missing = [k for k in REQUIRED_KEYS if k not in headers]
    if missing:
        have = ", ".join(headers) or "none"
        raise DataError(f"'{path}' lacks key(s) {', '.join(missing)}; it has {have}"
                        f" and needs {', '.join(REQUIRED_KEYS)} (plus optional 'classes')")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("train_y", "test_y", "classes") if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read '{path}' as a .npz of plain arrays ({err}); save it with numpy.savez "
                        "(object arrays are refused because they would need pickle)") from err

    shapes, labels = {}, {}
    for split in ("train", "test"):
        shape, dtype = headers[f"{split}_x"]
        shapes[split] = _image_layout(shape, dtype, f"'{path}' key '{split}_x'")
        labels[split] = _labels(arrays[f"{split}_y"], shape[0], f"'{path}' key '{split}_y'")
    if shapes["train"] != shapes["test"]:
        raise DataError(f"'{path}': train_x images are {shapes['train']} (C×H×W) but test_x images are "
                        f"{shapes['test']}; both splits need the same size and channels")
    if image_shape is not None and shapes["train"] != tuple(image_shape):
        raise DataError(f"'{path}': images are {shapes['train']} (C×H×W) but this dataset needs "
                        f"{tuple(image_shape)}")

    top = int(max(labels["train"].max(), labels["test"].max() if len(labels["test"]) else 0))
    if num_classes is None:
        num_classes = top + 1
        if num_classes > MAX_CLASSES:
            raise DataError(f"'{path}' contains the label {top}, which would mean {num_classes} classes (at most "
                            f"{MAX_CLASSES}); labels must be 0..num_classes-1 class indices")
    for split, values in labels.items():
        if len(values) and int(values.max()) >= num_classes:
            top = int(values.max())
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
    return NpzFacts(shapes["train"], num_classes, labels["train"], labels["test"], names)


def load_npz(path: str | Path, *, num_classes: int | None = None,
             image_shape: tuple[int, int, int] | None = None, max_bytes: int | None = None) -> LoadedArrays:
    """Load and check ``path`` (:func:`read_npz_facts`, then the images); infer ``num_classes`` as max
    label + 1 when None. Arguments as for :func:`read_npz_facts`."""
    facts = read_npz_facts(path, num_classes=num_classes, image_shape=image_shape, max_bytes=max_bytes)
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = {split: _images(npz[f"{split}_x"], f"'{path}' key '{split}_x'") for split in ("train", "test")}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read '{path}' as a .npz of plain arrays ({err}); save it with numpy.savez "
                        "(object arrays are refused because they would need pickle)") from err
    train = ArraySource(images["train"], facts.train_labels)
    test = ArraySource(images["test"], facts.test_labels)
    return LoadedArrays(train, test, facts.num_classes, facts.class_names)
