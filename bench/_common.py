"""Shared helpers for the benchmarks (run by hand; results committed under bench/results/)."""

from __future__ import annotations

import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The checkout sits next to shared/ (/work/main) or one level deeper (a worktree under /work/wt/).
SHARED_CIFAR = next((p / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz" for p in ROOT.parents[:2]
                     if (p / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz").exists()),
                    ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_jpeg_q75.npz")
LOCAL = ROOT / "local"


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, check=False).stdout.strip()
    except OSError:
        pass
    return info


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def cifar_subset(n_train: int, n_test: int, jpeg: Path | None = None) -> Path:
    """Decode the first images of the JPEG CIFAR-10 copy (default: the shared one) into a cached uint8 .npz."""
    jpeg = Path(jpeg) if jpeg is not None else SHARED_CIFAR
    out = LOCAL / f"cifar10_q75_{n_train}_{n_test}.npz"
    if out.exists():
        return out
    if not jpeg.exists():
        raise SystemExit(f"{jpeg} not found: the CIFAR-10 benchmark needs the JPEG copy (../shared/data/cifar10)")
    from PIL import Image

    src = np.load(jpeg)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data, offsets = src[f"{split}_jpeg"], src[f"{split}_offsets"]
        images = np.empty((n, 32, 32, 3), np.uint8)
        for i in range(n):
            blob = data[offsets[i]:offsets[i + 1]].tobytes()
            images[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        arrays[f"{split}_x"] = images
        arrays[f"{split}_y"] = src[f"{split}_labels"][:n].astype(np.int64)
    LOCAL.mkdir(exist_ok=True)
    np.savez(out, **arrays)
    return out


def add_results_arg(parser) -> None:
    """``--results DIR``: where ``write_result`` puts its files (default ``bench/results``)."""
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the result files")


def write_result(name: str, record: dict, markdown: str, results: Path | None = None) -> None:
    folder = Path(results) if results is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    (folder / f"{name}.md").write_text(markdown)


def gpu_peak_memory_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_memory_gib() -> float | None:
    """Peak memory PyTorch allocated on the GPU since the last reset (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
