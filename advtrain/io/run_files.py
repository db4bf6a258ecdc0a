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

from advtrain.errors import UserError
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.files import (
    os_error_text,
    read_text_no_follow,
    refuse_links,
    write_atomically,
    write_bytes,
    write_text,
)

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


def write_json(path: Path, record: dict, *, inside: Path | None = None) -> None:
    """Indented JSON, replaced whole (non-JSON numbers such as numpy floats become floats)."""
    write_text(path, json.dumps(record, indent=2, default=float), inside=inside)


def write_coreset_npz(path: Path, *, indices: Tensor, weights: Tensor, labels: Tensor, epoch: int,
                      extra: Mapping[str, np.ndarray] | None = None,
                      inside: Path | None = None) -> dict[str, np.ndarray]:
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

    write_atomically(path, write, inside=inside)
    return arrays


class RunFiles:
    """Reads and writes the files of one run folder (the folder itself is claimed by ``RunFolder``)."""

    def __init__(self, path: Path, *, writes: bool = True) -> None:
        self.path = Path(path)
        self.writes = writes
        self._torn = False

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
    # Every file is replaced whole through io.files (never appended to, never opened through a link).
    def write_recipe(self, text: str) -> None:
        if self.writes:
            write_text(self.path / RECIPE, text, inside=self.path)

    def append_metrics(self, record: dict[str, Any], *, replace_last: bool = False) -> None:
        """One line of ``metrics.jsonl`` per finished epoch (the file is rewritten whole: a crash never tears it).

        ``replace_last``: ``record`` completes the line already written for its epoch (the loop writes
        an epoch's line before its checkpoints, so a crash between them redoes the epoch, then
        adds what the writes took) instead of following it.
        """
        if self.writes:
            logged = self._read_metrics()
            if replace_last and logged and logged[-1]["epoch"] == record["epoch"]:
                logged.pop()
            write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in [*logged, record]), inside=self.path)

    def metrics_before(self, epoch: int) -> list[dict[str, Any]]:
        """The logged epochs before ``epoch``; a resume redoes the later ones, so their lines are dropped."""
        logged = self._read_metrics()
        kept = [m for m in logged if m["epoch"] < epoch]
        if self.writes and (len(kept) < len(logged) or self._torn):
            write_text(self.metrics, "".join(json.dumps(m) + "\n" for m in kept), inside=self.path)
        return kept

    def _read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``. A torn last line (a crash mid-write by an older advtrain or a
        full disk) is dropped: its epoch is redone from the checkpoint. Any other damage is named."""
        self._torn = False
        if not self.metrics.exists():
            return []
        try:
            text = read_text_no_follow(self.metrics)
        except OSError as err:
            raise UserError(f"cannot read '{self.metrics}' ({os_error_text(err)}).") from None
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                    raise ValueError("not an epoch record")
            except (ValueError, RecursionError):
                if number == len(lines) and not text.endswith("\n"):  # the unfinished last line
                    self._torn = True
                    break
                raise UserError(f"'{self.metrics}' line {number} is damaged (not an epoch record advtrain "
                                f"writes); the checkpoints are intact. Move the file aside to continue with a "
                                f"log that starts at the resumed epoch, or pass --overwrite to start over.") from None
            records.append(record)
        return records

    def write_coreset(self, epoch: int, *, indices: Tensor, weights: Tensor, labels: Tensor) -> None:
        if self.writes:
            write_coreset_npz(self.coreset(epoch), indices=indices, weights=weights, labels=labels, epoch=epoch,
                              inside=self.path)

    def save_checkpoint(self, state: ckpt_io.TrainingState, kind: str, *, epoch: int | None = None) -> Path:
        """``last``, ``best`` or the numbered ``epoch`` checkpoint (``epoch`` = completed epochs)."""
        path = {"last": self.last, "best": self.best}.get(kind) or self.path / epoch_checkpoint_name(epoch or 0)
        if self.writes:
            refuse_links(self.path, path.parent)
            ckpt_io.save(path, state, kind=kind)
        return path

    def write_report(self, report: dict[str, Any], markdown: str, curves_png: bytes | None) -> None:
        """report.md, curves.png, then report.json: written last, it marks a finished run."""
        if not self.writes:
            return
        write_text(self.path / REPORT_MD, markdown, inside=self.path)
        if curves_png is not None:
            write_bytes(self.path / CURVES, curves_png, inside=self.path)
        write_json(self.path / REPORT_JSON, report, inside=self.path)
