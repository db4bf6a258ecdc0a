"""The files of a training run's output folder: their names and their one writer.

Everything a run leaves in ``output.dir`` (the resolved recipe, the metrics log, checkpoints, the
coreset of each selection and the end-of-run report) is named and written here, so the loop and
the report never spell a file name or an on-disk format themselves. In a data-parallel job only
rank 0 writes; the other ranks hold a writer with ``writes=False``, whose writes do nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from advtrain.io import checkpoint as ckpt_io

RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
LAST = "last.safetensors"
BEST = "best.safetensors"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES = "curves.png"
CORESET_DIR = "coreset"
METRICS_CSV = "metrics.csv"  # log.csv (advtrain.reports.loggers)
TENSORBOARD_DIR = "tensorboard"  # log.tensorboard


def epoch_checkpoint_name(epoch: int) -> str:
    """``output.keep_every`` checkpoints, numbered by completed epochs (1-based)."""
    return f"epoch_{epoch:03d}.safetensors"


def coreset_name(epoch: int) -> str:
    """The coreset chosen for (0-based) ``epoch``, inside :data:`CORESET_DIR`, named by the 1-based epoch
    number users read everywhere else (screen, report.md, checkpoint names): ``epoch_002.npz`` trains epoch 2."""
    return f"epoch_{epoch + 1:03d}.npz"


def write_json(path: Path, record: dict) -> None:
    """Indented JSON, replaced whole (non-JSON numbers such as numpy floats become floats)."""
    text = json.dumps(record, indent=2, default=float)
    ckpt_io.write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_coreset_npz(path: Path, *, indices: Tensor, weights: Tensor, labels: Tensor, epoch: int,
                      extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A coreset as ``.npz`` (indices, weights, labels, epoch, then ``extra``), replaced whole.

    The one writer of coreset files: the run folder's ``coreset/epoch_XXX.npz`` and
    ``advtrain select --dump-indices`` (which adds histograms, the selector and timings as ``extra``).
    Returns the arrays written.
    """
    arrays = {"indices": indices.numpy(), "weights": weights.numpy(), "labels": labels.numpy(),
              "epoch": np.array(epoch), **(extra or {})}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    ckpt_io.write_atomically(path, write)
    return arrays


class RunFiles:
    """Reads and writes the files of one run folder (the folder itself is claimed by ``RunFolder``)."""

    def __init__(self, path: Path, *, writes: bool = True) -> None:
        self.path = Path(path)
        self.writes = writes

    # ----------------------------------------------------------------- names
    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def coreset(self, epoch: int) -> Path:
        return self.path / CORESET_DIR / coreset_name(epoch)

    # ---------------------------------------------------------------- writes
    def write_recipe(self, text: str) -> None:
        if self.writes:
            (self.path / RECIPE).write_text(text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` per finished epoch."""
        if self.writes:
            with open(self.metrics, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def metrics_before(self, epoch: int) -> list[dict[str, Any]]:
        """The logged epochs before ``epoch``; a resume redoes the later ones, so their lines are dropped."""
        if not self.metrics.exists():
            return []
        logged = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        kept = [m for m in logged if m["epoch"] < epoch]
        if len(kept) < len(logged) and self.writes:
            self.metrics.write_text("".join(json.dumps(m) + "\n" for m in kept))
        return kept

    def write_coreset(self, epoch: int, *, indices: Tensor, weights: Tensor, labels: Tensor) -> None:
        if self.writes:
            write_coreset_npz(self.coreset(epoch), indices=indices, weights=weights, labels=labels, epoch=epoch)

    def save_checkpoint(self, state: ckpt_io.TrainingState, kind: str, *, epoch: int | None = None) -> Path:
        """``last``, ``best`` or the numbered ``epoch`` checkpoint (``epoch`` = completed epochs)."""
        path = {"last": self.last, "best": self.best}.get(kind) or self.path / epoch_checkpoint_name(epoch or 0)
        if self.writes:
            ckpt_io.save(path, state, kind=kind)
        return path

    def write_report(self, report: dict[str, Any], markdown: str, curves_png: bytes | None) -> None:
        """report.md, curves.png, then report.json: written last, it marks a finished run."""
        if not self.writes:
            return
        ckpt_io.write_atomically(self.path / REPORT_MD, lambda tmp: tmp.write_text(markdown))
        if curves_png is not None:
            ckpt_io.write_atomically(self.path / CURVES, lambda tmp: tmp.write_bytes(curves_png))
        write_json(self.path / REPORT_JSON, report)
