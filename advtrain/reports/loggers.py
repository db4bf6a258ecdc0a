"""Per-epoch metrics in the formats other tools read: CSV and TensorBoard (recipe section ``log``).

Both are views of ``metrics.jsonl``, written into the run folder only, after each epoch:

* ``metrics.csv`` is rendered whole from the run's epoch records and replaced atomically, so its
  header is the union of every epoch's columns (validation and selection columns appear only on
  the epochs that have them) and a resumed run drops the lines of the epochs it redoes, exactly
  as ``metrics.jsonl`` does.
* ``tensorboard/`` holds event files written with ``torch.utils.tensorboard`` (it needs the
  ``tensorboard`` package: ``pip install 'advtrain[tensorboard]'``). A resumed run opens its
  writer with ``purge_step`` at its first epoch, so TensorBoard hides the steps that are redone.

Nested entries flatten with ``/`` (``val/pgd20``, ``selection/attack_s``); the step is the
record's ``epoch``, as in ``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Protocol

from advtrain.config.schema import LogConfig, log_problems
from advtrain.io.run_files import METRICS_CSV as CSV_FILE
from advtrain.io.run_files import TENSORBOARD_DIR

#: Columns that lead the CSV in this order; the others follow sorted.
LEADING = ("epoch", "phase", "train_loss", "train_acc", "lr", "samples", "coreset_size")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"val": {"pgd20": 0.4}}`` → ``{"val/pgd20": 0.4}``; lists and None are left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif value is not None and not isinstance(value, (list, tuple)):
            out[name] = value
    return out


def csv_text(records: list[dict[str, Any]]) -> str:
    """The CSV of ``records``: one row per epoch, the union of their columns, empty where absent."""
    rows = [flatten(r) for r in records]
    seen = {k for row in rows for k in row}
    columns = [c for c in LEADING if c in seen] + sorted(seen - set(LEADING))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a record as TensorBoard tags (``epoch`` is the step, not a tag)."""
    out = {}
    for key, value in flatten(record).items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class EpochLogger(Protocol):
    def log_epoch(self, record: dict[str, Any], records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class CsvLogger:
    """``metrics.csv``, rendered from all records after each epoch and replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CSV_FILE

    def log_epoch(self, record: dict[str, Any], records: list[dict[str, Any]]) -> None:
        from advtrain.io.files import write_atomically

        text = csv_text(records)
        write_atomically(self.path, lambda tmp: tmp.write_text(text), inside=self.path.parent)

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars of each epoch in ``<run>/tensorboard`` (``torch.utils.tensorboard``)."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(folder) / TENSORBOARD_DIR
        self._writer = SummaryWriter(str(self.path), purge_step=first_epoch if first_epoch > 0 else None)

    def log_epoch(self, record: dict[str, Any], records: list[dict[str, Any]]) -> None:
        step = int(record["epoch"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Loggers:
    """The loggers a ``log`` section turns on (none by default); rank 0 alone builds any."""

    def __init__(self, loggers: list[EpochLogger]) -> None:
        self._loggers = loggers

    @classmethod
    def build(cls, config: LogConfig | None, folder: Path, *, first_epoch: int, writes: bool = True) -> Loggers:
        if config is None or not writes:
            return cls([])
        from advtrain.errors import UserError

        problems = log_problems(config)
        if problems:
            raise UserError(problems[0])
        loggers: list[EpochLogger] = []
        if config.csv:
            loggers.append(CsvLogger(folder))
        if config.tensorboard:
            loggers.append(TensorBoardLogger(folder, first_epoch))
        return cls(loggers)

    def log_epoch(self, record: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for logger in self._loggers:
            logger.log_epoch(record, records)

    def close(self) -> None:
        for logger in self._loggers:
            logger.close()
        self._loggers = []
