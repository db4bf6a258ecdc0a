"""Data: sources, augmentation, batching, splits, every dataset builder and the .npz checks."""

from __future__ import annotations

import io
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advtrain.data import DATASETS, ArraySource, FolderSource, iterate_batches, split_validation
from advtrain.data.batches import augment_batch, random_crop
from advtrain.errors import DataError

SHARED_CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def _build(name: str, **values):
    entry = DATASETS.get(name)
    return entry.build(entry.params(**values))


def _source(n: int = 20, c: int = 3, hw: int = 6, classes: int = 4) -> ArraySource:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, c, hw, hw), generator=gen, dtype=torch.uint8)
    return ArraySource(images, torch.arange(n) % classes)


def _npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = {"train_x": rng.integers(0, 256, (12, 5, 5, 3), dtype=np.uint8), "train_y": np.arange(12) % 3,
            "test_x": rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8), "test_y": np.arange(6) % 3}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


# --- sources ---------------------------------------------------------------------------------------------

def test_array_source_items_batches_and_subsets() -> None:
    src = _source()
    x, y, i = src[5]
    assert x.dtype == torch.float32 and x.shape == (3, 6, 6) and (y, i) == (1, 5)
    torch.testing.assert_close(x, src.images[5].float() / 255)
    idx = torch.tensor([7, 2, 7])
    torch.testing.assert_close(src.load(idx), torch.stack([src[j][0] for j in idx.tolist()]))
    sub = src.subset(torch.tensor([3, 9]))
    assert len(sub) == 2 and sub.labels.tolist() == [3, 1] and torch.equal(sub.images[1], src.images[9])


def test_folder_source_resizes_shorter_side_then_center_crops(tmp_path) -> None:
    img = np.zeros((20, 40, 3), np.uint8)  # H×W = 20×40
    img[:, 20:] = 255  # right half white
    Image.fromarray(img).save(tmp_path / "a.png")
    src = FolderSource([(str(tmp_path / "a.png"), 1)], image_size=16)
    x, y, i = src[0]
    # shorter side 20 → round(16·256/224) = 18, so 36×18, then the central 16×16: half black, half white.
    assert x.shape == (3, 16, 16) and (y, i) == (1, 0)
    assert x[:, :, :7].max() == 0 and x[:, :, 9:].min() == 1
    assert src.load(torch.tensor([0, 0])).shape == (2, 3, 16, 16) and src.labels.tolist() == [1]


# --- augmentation ----------------------------------------------------------------------------------------

def test_random_crop_matches_slicing_of_the_padded_image() -> None:
    x = torch.rand(5, 2, 7, 7)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [6, 2]])
    out = random_crop(x, 4, offsets)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for n, (r, c) in enumerate(offsets.tolist()):
        torch.testing.assert_close(out[n], padded[n, :, r:r + 7, c:c + 7])
    torch.testing.assert_close(out[2], x[2])  # offset == padding: unmoved


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
def test_augment_is_seeded_and_preserves_shape_and_range(mode: str) -> None:
    x = torch.rand(32, 3, 8, 8)
    a = augment_batch(x, mode, 2, torch.Generator().manual_seed(3))
    b = augment_batch(x, mode, 2, torch.Generator().manual_seed(3))
    c = augment_batch(x, mode, 2, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert augment_batch(x, "none", 2, None) is x


def test_crop_shifts_content_by_at_most_the_padding() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1  # one bright pixel in the middle
    out = augment_batch(x, "crop", 3, torch.Generator().manual_seed(0))
    rows, cols = out[:, 0].amax(2).argmax(1), out[:, 0].amax(1).argmax(1)
    assert out.flatten(1).sum(1).eq(1).all()  # the pixel never leaves a 9×9 image when padding is 3
    assert set(rows.tolist()) == set(range(1, 8)) and set(cols.tolist()) == set(range(1, 8))


def test_flip_mirrors_about_half_the_images() -> None:
    x = torch.rand(64, 3, 5, 5)
    out = augment_batch(x, "crop_flip", 0, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same ^ flipped).all() and 16 < int(flipped.sum()) < 48


# --- batches ---------------------------------------------------------------------------------------------

def test_iterate_batches_covers_each_index_once_and_is_reproducible() -> None:
    src = _source(n=23)
    indices = torch.tensor([0, 3, 4, 8, 9, 10, 15, 16, 21, 22])  # e.g. a coreset

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(iterate_batches(src, indices, 4, shuffle=True, generator=gen, augment="crop_flip",
                                    padding=2))

    first = epoch(0)
    seen = torch.cat([idx for _, _, idx in first])
    assert [len(idx) for _, _, idx in first] == [4, 4, 2]
    assert sorted(seen.tolist()) == indices.tolist() and seen.tolist() != indices.tolist()
    for x, y, idx in first:
        assert torch.equal(y, src.labels[idx]) and x.shape == (len(idx), 3, 6, 6)
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat([i for _, _, i in epoch(1)]), seen)


def test_iterate_batches_in_order_without_augmentation_and_drop_last() -> None:
    src = _source(n=10)
    batches = list(iterate_batches(src, torch.arange(10), 4, shuffle=False, generator=None, drop_last=True))
    assert [idx.tolist() for _, _, idx in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    torch.testing.assert_close(batches[1][0], src.load(torch.arange(4, 8)))


def test_iterate_batches_over_image_files_uses_the_same_order(tmp_path) -> None:
    samples = []
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        samples.append((str(tmp_path / f"{i}.png"), i % 2))
    src = FolderSource(samples, image_size=8)
    batches = list(iterate_batches(src, torch.arange(6), 4, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([i for _, _, i in batches]), order)
    for x, y, idx in batches:
        assert torch.equal(y, idx % 2)
        torch.testing.assert_close(x[:, 0, 0, 0], (40 * idx).float() / 255)


# --- validation split ------------------------------------------------------------------------------------

def test_split_validation_is_disjoint_seeded_and_stratified() -> None:
    src = _source(n=200, classes=4)
    src.images[:, 0, 0, 0] = torch.arange(200, dtype=torch.uint8)  # tag each row to trace it
    train, val = split_validation(src, 0.1, seed=0)
    tags = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(train) == 180 and len(val) == 20 and not tags(train) & tags(val)
    assert tags(train) | tags(val) == set(range(200))
    assert torch.bincount(val.labels).tolist() == [5, 5, 5, 5]
    assert tags(split_validation(src, 0.1, seed=0)[1]) == tags(val)
    assert tags(split_validation(src, 0.1, seed=1)[1]) != tags(val)
    train0, val0 = split_validation(src, 0.0, seed=0)
    assert len(val0) == 0 and len(train0) == 200 and val0.images.shape[1:] == src.images.shape[1:]


# --- datasets --------------------------------------------------------------------------------------------

def test_registry_names() -> None:
    assert DATASETS.names() == ["arrays", "cifar10", "cifar100", "digits", "imagefolder", "svhn", "synthetic"]


def test_digits() -> None:
    data = _build("digits")
    assert len(data.train) + len(data.val) + len(data.test) == 1797 and len(data.test) == 450
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10 and data.batch_size == 64
    assert data.augment == "none" and int(data.train.images.max()) == 255
    assert 0.2 < data.mean[0] < 0.4 and len(data.std) == 1
    other = _build("digits", split_seed=5)
    assert torch.equal(other.test.images, data.test.images)  # the test set does not move with split_seed


def test_synthetic_is_seeded_and_learnable() -> None:
    a, b = _build("synthetic", num_classes=4, channels=1), _build("synthetic", num_classes=4, channels=1)
    assert torch.equal(a.train.images, b.train.images) and a.image_shape == (1, 8, 8)
    assert not torch.equal(_build("synthetic", seed=1).train.images[:, :1], a.train.images)
    # Nearest class mean (from train) classifies the test set: the labels carry signal.
    x, xt = a.train.images.float().flatten(1), a.test.images.float().flatten(1)
    means = torch.stack([x[a.train.labels == k].mean(0) for k in range(4)])
    assert (torch.cdist(xt, means).argmin(1) == a.test.labels).float().mean() > 0.9


def test_arrays_roundtrip_layout_classes_and_floats(tmp_path) -> None:
    path = _npz(tmp_path / "d.npz", classes=np.array(["a", "b", "c"]))
    data = _build("arrays", path=str(path), val_fraction=0.0)
    raw = np.load(path)
    assert data.image_shape == (3, 5, 5) and data.num_classes == 3 and data.class_names == ["a", "b", "c"]
    assert np.array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), raw["train_x"])
    grey = _npz(tmp_path / "g.npz", train_x=np.full((12, 4, 4), 0.5), test_x=np.zeros((6, 4, 4), np.float32))
    data = _build("arrays", path=str(grey), num_classes=5)
    assert data.image_shape == (1, 4, 4) and data.num_classes == 5 and int(data.train.images.max()) == 128


@pytest.mark.parametrize(("arrays", "match"), [
    ({"test_y": None}, r"lacks key\(s\) test_y"),
    ({"train_x": np.zeros((12, 3, 5, 5), np.uint8)}, r"train_x' has shape \(12, 3, 5, 5\).*channels-first"),
    ({"train_y": np.arange(11)}, r"train_y' has shape \(11,\); expected \(12,\)"),
    ({"test_y": np.array([0, 1, 2, 3, 0, 1])}, r"test_y' contains the label 3 but there are 3 classes"),
    ({"train_x": np.full((12, 5, 5, 3), 2.0)}, r"train_x' is float with values in \[2.0, 2.0\]"),
    ({"train_x": np.zeros((12, 5, 5, 3), np.int32)}, r"dtype int32; expected uint8"),
    ({"test_x": np.zeros((6, 4, 4, 3), np.uint8)}, r"test_x images are \(3, 4, 4\)"),
    ({"train_y": np.full(12, 0.5)}, r"expected integer class indices"),
])
def test_arrays_validation_errors(tmp_path, arrays, match) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as err:
        _build("arrays", path=str(path), num_classes=3)
    assert str(path) in str(err.value)


def test_arrays_missing_file_and_pickled_objects(tmp_path) -> None:
    with pytest.raises(DataError, match=r"'.*nope.npz' does not exist"):
        _build("arrays", path=str(tmp_path / "nope.npz"))
    path = _npz(tmp_path / "obj.npz", classes=np.array([{"a": 1}, None, 3], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        _build("arrays", path=str(path))


def _write_cifar(root: Path, n: int, hundred: bool = False) -> tuple[np.ndarray, list[int]]:
    """torchvision's CIFAR layout (pickled dicts), written here as a test fixture."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    key = "fine_labels" if hundred else "labels"
    labels = [int(v) for v in rng.integers(0, 100 if hundred else 10, n)]
    files = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
    meta_key = "fine_label_names" if hundred else "label_names"
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(100 if hundred else 10)]}, f)
    return data, labels


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_from_torchvision_files(tmp_path, monkeypatch, hundred: bool) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our fixture has other md5s
    data, labels = _write_cifar(tmp_path, 8, hundred)
    bundle = _build("cifar100" if hundred else "cifar10", root=str(tmp_path), val_fraction=0.0)
    assert len(bundle.train) == (8 if hundred else 40) and len(bundle.test) == 8
    assert torch.equal(bundle.test.images, torch.from_numpy(data.reshape(8, 3, 32, 32)))
    assert bundle.test.labels.tolist() == labels and bundle.num_classes == (100 if hundred else 10)
    assert bundle.augment == "crop_flip" and bundle.class_names[1] == "c1"


def test_cifar_missing_and_failed_download(tmp_path, monkeypatch) -> None:
    import torchvision

    with pytest.raises(DataError, match=r"cifar-10-batches-py'.*data.download=true.*data.path"):
        _build("cifar10", root=str(tmp_path))

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        _build("cifar10", root=str(tmp_path), download=True)


def test_cifar_from_npz_path(tmp_path) -> None:
    path = _npz(tmp_path / "c.npz", train_x=np.zeros((12, 32, 32, 3), np.uint8),
                test_x=np.zeros((6, 32, 32, 3), np.uint8))
    data = _build("cifar10", path=str(path), val_fraction=0.25)
    assert len(data.train) == 9 and len(data.val) == 3 and data.class_names[0] == "airplane"
    assert data.mean == (0.4914, 0.4822, 0.4465)
    with pytest.raises(DataError, match=r"images are \(3, 5, 5\).*needs \(3, 32, 32\)"):
        _build("cifar10", path=str(_npz(tmp_path / "small.npz")))


def test_svhn_from_torchvision_files(tmp_path, monkeypatch) -> None:
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # SVHN's .mat layout: H×W×C×N, labels 1..10
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(tmp_path / name, {"X": x, "y": np.array([[10], [1], [2], [3], [10]])})
    data = _build("svhn", root=str(tmp_path), val_fraction=0.0)
    assert data.test.labels.tolist() == [0, 1, 2, 3, 0] and data.augment == "crop" and data.mean == (0.5,) * 3
    assert torch.equal(data.test.images[2], torch.from_numpy(x[..., 2].transpose(2, 0, 1).copy()))
    with pytest.raises(DataError, match="SVHN not found"):
        _build("svhn", root=str(tmp_path / "empty"))


def test_imagefolder(tmp_path) -> None:
    for split, per_class in (("train", 3), ("val", 1)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / split / cls / f"{i}.jpg")
    data = _build("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 6 and len(data.test) == 2
    assert data.image_shape == (3, 8, 8) and data.test.labels.tolist() == [0, 1]
    x, y, _ = next(iterate_batches(data.train, torch.arange(6), 6, shuffle=False, generator=None))
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(DataError, match="val' has class folder.* bird that train/ lacks"):
        _build("imagefolder", root=str(tmp_path))
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(DataError, match="train/bird' holds no images"):
        _build("imagefolder", root=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        _build("imagefolder", root=str(tmp_path / "missing"))


@pytest.mark.skipif(not (SHARED_CIFAR / "cifar10_jpeg_q75.npz").is_file(), reason="no local CIFAR-10 copy")
def test_real_cifar10_subset_through_path(tmp_path) -> None:
    src = np.load(SHARED_CIFAR / "cifar10_jpeg_q75.npz")
    exact = np.load(SHARED_CIFAR / "cifar10_exact_prefix_subset.npz")

    def decode(split: str, n: int) -> np.ndarray:
        blob, offsets = src[f"{split}_jpeg"], src[f"{split}_offsets"]
        images = [Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())) for i in range(n)]
        return np.stack([np.asarray(img.convert("RGB")) for img in images])

    n = int(exact["train_index"][3]) + 1  # enough rows to include four exactly stored images
    arrays = {"train_x": decode("train", n), "train_y": src["train_labels"][:n].astype(np.int64),
              "test_x": decode("test", 16), "test_y": src["test_labels"][:16].astype(np.int64)}
    np.savez(tmp_path / "cifar_subset.npz", **arrays)
    data = _build("cifar10", path=str(tmp_path / "cifar_subset.npz"), val_fraction=0.0)
    assert len(data.train) == n and data.train.labels.tolist() == arrays["train_y"].tolist()
    assert np.array_equal(exact["train_labels_all"][:n], arrays["train_y"])
    # JPEG q75 stays within a few grey levels of the exact pixels, in the same layout (C×H×W from H×W×C).
    ours = data.train.images[torch.from_numpy(exact["train_index"][:4].astype(np.int64))].permute(0, 2, 3, 1)
    assert np.abs(ours.numpy().astype(int) - exact["train_x"][:4].astype(int)).mean() < 6


def test_array_source_to_device_keeps_content():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    source = ArraySource(images, torch.arange(6))
    moved = source.to_device("cpu")
    idx = torch.tensor([5, 0, 2])
    assert torch.equal(moved.load(idx), source.load(idx))
    assert torch.equal(moved.labels, source.labels)
