"""The registered datasets: each a params dataclass and a ``build(params) -> DataBundle``.

Small datasets are held in memory as uint8; ``imagefolder`` decodes files on access. The
validation split is always carved from the training data (seeded, stratified), and per-channel
mean/std, when a dataset has no standard values, come from its full training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advtrain.data.arrays import MAX_CLASSES, load_npz, memory_limit
from advtrain.data.batches import AUGMENTATIONS
from advtrain.data.bundle import DataBundle, channel_stats, split_validation
from advtrain.data.source import IMAGE_EXTENSIONS, ArraySource, FolderSource
from advtrain.errors import DataError
from advtrain.params import param
from advtrain.registry import Registry

DATASETS = Registry("dataset")

#: Upper bounds of the loader settings: beyond them a value is a typo, not an experiment.
MAX_BATCH = 65_536
MAX_PADDING = 256
MAX_IMAGE_SIZE = 4096

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Per-channel statistics of the training images (population std, not the often-copied 0.2023...).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class LoaderParams:
    """Loader settings every dataset shares."""

    batch_size: int = param(128, gt=0, le=MAX_BATCH, help="samples per training batch")
    val_fraction: float = param(0.1, ge=0, lt=1, help="share of the training set held out for validation")
    split_seed: int = param(0, ge=0, le=2**63 - 1, help="seed of the validation split")
    augment: str = param("none", choices=AUGMENTATIONS, help="training augmentation, done on the device")
    padding: int = param(4, ge=0, le=MAX_PADDING, help="zero padding of the random crop, in pixels")
    num_workers: int = param(0, ge=0, le=256, help="decoding workers (image folders only)")


def check_training_left(params: LoaderParams, total: int, left: int) -> None:
    """Refuse a validation split that leaves no training image."""
    if left == 0:
        raise DataError(f"data.val_fraction={params.val_fraction} holds out all {total} training images, "
                        "leaving none to train on; lower data.val_fraction")


def _bundle(params: LoaderParams, train: ArraySource | FolderSource, test: ArraySource | FolderSource,
            num_classes: int, class_names: list[str], stats: tuple | None = None) -> DataBundle:
    """Split validation off ``train`` and fill the bundle; ``stats`` None = compute from ``train``."""
    if stats is None:
        assert isinstance(train, ArraySource)
        stats = channel_stats(train.images)
    train_part, val = split_validation(train, params.val_fraction, params.split_seed)
    check_training_left(params, len(train), len(train_part))
    return DataBundle(train=train_part, val=val, test=test, num_classes=num_classes,
                      image_shape=train.image_shape, mean=tuple(stats[0]), std=tuple(stats[1]),
                      class_names=list(class_names), augment=params.augment, padding=params.padding,
                      batch_size=params.batch_size, num_workers=params.num_workers)


# --- digits ----------------------------------------------------------------------------------------------

@dataclass
class DigitsParams(LoaderParams):
    batch_size: int = param(64, gt=0, le=MAX_BATCH, help="samples per training batch")
    test_fraction: float = param(0.25, gt=0, lt=1, help="share held out as the (fixed, seed 0) test set")


@DATASETS.register("digits", params=DigitsParams)
def build_digits(params: DigitsParams) -> DataBundle:
    """scikit-learn's 1797 8×8 handwritten digits (bundled, offline)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images / 16 * 255).astype(np.uint8)[:, None]
    full = ArraySource(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)))
    # The test split never depends on split_seed, so results stay comparable across validation splits.
    train, test = split_validation(full, params.test_fraction, seed=0)
    return _bundle(params, train, test, 10, [str(i) for i in range(10)])


# --- CIFAR / SVHN (torchvision layout, or a .npz) --------------------------------------------------------

@dataclass
class TorchvisionParams(LoaderParams):
    root: str = param("./data", path=True, help="folder holding (or receiving) torchvision's files")
    download: bool = param(False, help="download into root when missing")


@dataclass
class CifarParams(TorchvisionParams):
    augment: str = param("crop_flip", choices=AUGMENTATIONS, help="training augmentation, done on the device")
    path: str | None = param(None, path=True, help="a uint8 .npz (train_x N×32×32×3, train_y, test_x, test_y) "
                                           "used instead of root")


@dataclass
class SvhnParams(TorchvisionParams):
    augment: str = param("crop", choices=AUGMENTATIONS, help="training augmentation (no flip: digits)")


def _torchvision(cls: Any, root: str, download: bool, title: str, train: dict, test: dict,
                 has_path: bool) -> tuple[Any, Any]:
    """Torchvision's train and test sets (``train``/``test``: their split arguments), or a DataError."""
    try:
        splits = cls(root, download=download, **train), cls(root, download=download, **test)
    except (RuntimeError, OSError) as err:
        if download:
            npz = _NPZ_HINT if has_path else ""
            raise DataError(f"could not download {title} into '{root}' ({err}); check the network, or fetch "
                            f"it elsewhere and point data.root at the folder that holds it{npz}") from err
        raise torchvision_not_found(cls, root, title, has_path) from err
    return splits


_NPZ_HINT = ", or set data.path=<file.npz> with train_x/train_y/test_x/test_y"


def torchvision_not_found(cls: Any, root: str, title: str, has_path: bool) -> DataError:
    """The error for a torchvision dataset missing from ``root`` (and not to be downloaded)."""
    folder = Path(root).expanduser() / getattr(cls, "base_folder", "")
    npz = _NPZ_HINT if has_path else ""
    return DataError(f"{title} not found in '{folder}' (torchvision's layout); set data.download=true to let "
                     f"`advtrain run` fetch it into data.root (eval never downloads), or point data.root at a folder "
                     f"that has it (advtrain eval: --data root=FOLDER){npz}")


def _cifar(params: CifarParams, num_classes: int, title: str, stats: tuple) -> DataBundle:
    import torchvision

    if params.path is not None:
        arrays = load_npz(params.path, image_shape=(3, 32, 32), num_classes=num_classes)
        names = arrays.class_names or (CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(100)])
        return _bundle(params, arrays.train, arrays.test, num_classes, names, stats)
    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    train, test = _torchvision(cls, params.root, params.download, title, {"train": True}, {"train": False},
                               has_path=True)

    def source(ds: Any) -> ArraySource:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return ArraySource(images, torch.tensor(ds.targets, dtype=torch.long))

    return _bundle(params, source(train), source(test), num_classes, list(train.classes), stats)


@DATASETS.register("cifar10", params=CifarParams)
def build_cifar10(params: CifarParams) -> DataBundle:
    """CIFAR-10: 50k/10k 32×32 colour images, 10 classes."""
    return _cifar(params, 10, "CIFAR-10", CIFAR10_STATS)


@DATASETS.register("cifar100", params=CifarParams)
def build_cifar100(params: CifarParams) -> DataBundle:
    """CIFAR-100: 50k/10k 32×32 colour images, 100 classes."""
    return _cifar(params, 100, "CIFAR-100", CIFAR100_STATS)


@DATASETS.register("svhn", params=SvhnParams)
def build_svhn(params: SvhnParams) -> DataBundle:
    """SVHN house-number digits: 73k/26k 32×32 colour images (the 'extra' split is not used)."""
    import torchvision

    train, test = _torchvision(torchvision.datasets.SVHN, params.root, params.download, "SVHN",
                               {"split": "train"}, {"split": "test"}, has_path=False)

    def source(ds: Any) -> ArraySource:
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        return ArraySource(images, torch.from_numpy(ds.labels).long())

    names = [str(i) for i in range(10)]
    return _bundle(params, source(train), source(test), 10, names, ((0.5,) * 3, (0.5,) * 3))


# --- image folders ---------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ImageFolderParams(LoaderParams):
    root: str = param(path=True, help="folder with train/ and val/ (or test/), each holding one folder per class")
    image_size: int = param(224, gt=0, le=MAX_IMAGE_SIZE,
                            help="side of the center crop (shorter side resized to size·256/224)")
    augment: str = param("crop_flip", choices=AUGMENTATIONS, help="training augmentation, done on the device")
    padding: int = param(16, ge=0, le=MAX_PADDING, help="zero padding of the random crop, in pixels")


def scan_image_folder(folder: Path, classes: list[str] | None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) for every image under ``folder/<class>/``; labels follow ``classes`` (or sorted)."""
    if not folder.is_dir():
        raise DataError(f"image folder '{folder}' does not exist; expected one sub-folder per class")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"'{folder}' has no class sub-folders; expected e.g. '{folder}/<class>/<image>.jpg'")
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"'{folder}' has class folder(s) {', '.join(unknown[:5])} that train/ lacks")
    samples: list[tuple[str, int]] = []
    for name in found:
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder '{folder / name}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), classes.index(name)) for p in files]
    return samples, classes


def image_folder_samples(root_text: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """(train samples, test samples, class names) of an image-folder root (files listed, none decoded)."""
    root = Path(root_text).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root '{root}' is a file, not a folder; it must be a folder holding train/ and val/ "
                        f"(or test/) folders (for a .npz file use data.name=arrays with data.path)")
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist; it must hold train/ and val/ (or test/) folders")
    held_out = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if held_out is None:
        raise DataError(f"'{root}' has no val/ or test/ folder next to train/ (the test split comes from it)")
    train_samples, classes = scan_image_folder(root / "train", None)
    test_samples, _ = scan_image_folder(held_out, classes)
    return train_samples, test_samples, classes


@DATASETS.register("imagefolder", params=ImageFolderParams)
def build_imagefolder(params: ImageFolderParams) -> DataBundle:
    """Images in class folders (e.g. the 12-class ImageNet subset of the perceptual-AT papers)."""
    train_samples, test_samples, classes = image_folder_samples(params.root)
    train = FolderSource(train_samples, params.image_size)
    test = FolderSource(test_samples, params.image_size)
    return _bundle(params, train, test, len(classes), classes, IMAGENET_STATS)


# --- arrays and synthetic --------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ArraysParams(LoaderParams):
    path: str = param(path=True, help=".npz with train_x (N×H×W×C or N×H×W, uint8), train_y, test_x, test_y[, classes]")
    num_classes: int | None = param(None, gt=0, le=MAX_CLASSES, help="number of classes; null = max label + 1")


@DATASETS.register("arrays", params=ArraysParams)
def build_arrays(params: ArraysParams) -> DataBundle:
    """Any image classification set stored as arrays in a .npz file."""
    arrays = load_npz(params.path, num_classes=params.num_classes)
    names = arrays.class_names or [str(i) for i in range(arrays.num_classes)]
    return _bundle(params, arrays.train, arrays.test, arrays.num_classes, names)


@dataclass
class SyntheticParams(LoaderParams):
    n_train: int = param(256, gt=0, le=10**7, help="training images")
    n_test: int = param(128, gt=0, le=10**7, help="test images")
    num_classes: int = param(10, ge=2, le=MAX_CLASSES, help="classes")
    image_size: int = param(8, gt=0, le=MAX_IMAGE_SIZE, help="height and width")
    channels: int = param(3, choices=(1, 3), help="1 (grey) or 3 (colour)")
    seed: int = param(0, ge=0, le=2**63 - 1, help="seed of prototypes, noise and labels")


def check_synthetic_fits(params: SyntheticParams) -> None:
    """Refuse synthetic data that would not fit in memory while it is generated."""
    nbytes = 4 * (params.n_train + params.n_test) * params.channels * params.image_size**2
    if nbytes > memory_limit():
        raise DataError(f"synthetic data of {params.n_train + params.n_test} images of {params.channels}×"
                        f"{params.image_size}×{params.image_size} needs {nbytes / 2**30:.1f} GiB while generated, "
                        "more than half this machine's memory; lower data.n_train, data.n_test or data.image_size")


def synthetic_arrays(n: int, prototypes: torch.Tensor, gen: torch.Generator,
                     noise: float = 0.15) -> ArraySource:
    """``n`` balanced samples: a class prototype plus Gaussian noise, clipped to [0,1]."""
    k = len(prototypes)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    x = prototypes[labels] + noise * torch.randn((n, *prototypes.shape[1:]), generator=gen)
    return ArraySource(x.clamp(0, 1).mul(255).round().to(torch.uint8), labels)


@DATASETS.register("synthetic", params=SyntheticParams)
def build_synthetic(params: SyntheticParams) -> DataBundle:
    """Seeded, learnable random data (class prototypes plus noise) for tests and smoke runs."""
    check_synthetic_fits(params)
    gen = torch.Generator().manual_seed(params.seed)
    shape = (params.num_classes, params.channels, params.image_size, params.image_size)
    prototypes = torch.rand(shape, generator=gen)
    train = synthetic_arrays(params.n_train, prototypes, gen)
    test = synthetic_arrays(params.n_test, prototypes, gen)
    return _bundle(params, train, test, params.num_classes, [f"class_{i}" for i in range(params.num_classes)])
