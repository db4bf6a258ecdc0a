"""The records a run writes, as dataclasses beside the files they describe.

:class:`MetricsLine` is one line of ``metrics.jsonl`` (:data:`~advtrain.io.run_files.METRICS`),
:class:`RunReport` the content of ``report.json`` (:data:`~advtrain.io.run_files.REPORT_JSON`).
The loop and the report build these and nothing else; :meth:`MetricsLine.to_json` gives the line
exactly as earlier versions wrote it (a key an epoch did not measure is left out, not null), so
``advtrain compare`` and any reader of older runs keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from advtrain.io.run_files import METRICS, REPORT_JSON

__all__ = ["EPOCH_PARTS", "METRICS", "REPORT_JSON", "MetricsLine", "RunReport"]

#: The parts of an epoch's wall time, in the order a split is shown (``timing`` of a metrics line);
#: ``other`` is what no named part covers.
EPOCH_PARTS = ("selection", "train", "eval", "guard", "save", "log", "other")

#: Keys a line holds only when its epoch measured them (left out of the JSON otherwise).
_MEASURED_ONLY = ("train_time", "eval_time", "val", "overfit_probe_pgd5", "compile_warmup_s", "timing")


@dataclass
class MetricsLine:
    """One epoch of a run (one line of ``metrics.jsonl``).

    Attributes:
        epoch: The (0-based) epoch.
        phase: ``full`` (warm start or selector=full), ``coreset`` or ``skip``.
        train_loss: Mean (weighted) training loss of the epoch (NaN for a skipped epoch).
        train_acc: Training accuracy at the points trained on (NaN for a skipped epoch).
        samples: Training samples seen.
        lr: Learning rate after the epoch's last step.
        coreset_size: Samples in the coreset a coreset epoch trained on (None otherwise).
        selection: Timings of the selection pass the epoch began with (None when it did not select).
        epoch_time: Wall seconds of the whole epoch: selection, training, validation, guard, checkpoint and
            metrics writes (before the ``timing`` split was recorded, the writes were left out).
        train_time: Seconds of training alone (absent for a skipped epoch).
        eval_time: Seconds of validation (absent when the epoch did not validate).
        val: Validation accuracies, clean and per attack (absent when the epoch did not validate).
        overfit_probe_pgd5: The catastrophic-overfitting probe's accuracy (absent without the guard).
        compile_warmup_s: Seconds of the first compiled call (``train.compile``), on the epoch that made it.
        timing: Where ``epoch_time`` went, in seconds, one entry per part of :data:`EPOCH_PARTS`
            (``save``: checkpoint and coreset files; ``log``: metrics.jsonl and the loggers); the parts
            add up to ``epoch_time`` (absent in lines of earlier versions).
    """

    epoch: int
    phase: str
    train_loss: float = float("nan")
    train_acc: float = float("nan")
    samples: int = 0
    lr: float = 0.0
    coreset_size: int | None = None
    selection: dict[str, float] | None = None
    epoch_time: float = 0.0
    train_time: float | None = None
    eval_time: float | None = None
    val: dict[str, float] | None = None
    overfit_probe_pgd5: float | None = None
    compile_warmup_s: float | None = None
    timing: dict[str, float] | None = None

    def timed(self, split: dict[str, float]) -> MetricsLine:
        """Take ``epoch_time`` and ``timing`` from a split of :class:`advtrain.train.phase_clock.PhaseClock`."""
        self.epoch_time = split["total"]
        self.timing = {k: v for k, v in split.items() if k != "total"}
        return self

    def to_json(self) -> dict[str, Any]:
        """The line as written to ``metrics.jsonl``."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k in _MEASURED_ONLY and v is None)}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> MetricsLine:
        """A line read back from ``metrics.jsonl`` (keys this version does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in line.items() if k in known})


@dataclass
class RunReport:
    """A finished training run (``report.json``)."""

    name: str
    model: str
    dataset: str
    objective: str
    attack: str | None
    selector: str
    epochs: int
    epochs_run: int
    wall_seconds: float
    train_seconds: float
    selection_seconds: float
    selection_share: float
    loop_seconds: float
    speedup: dict[str, float] | None
    best_metric: float | None
    best_metric_name: str | None
    best_split: str | None
    best_epoch: int | None
    final_val: dict[str, float]
    test: dict[str, Any] | None
    compile: dict[str, Any] | None
    epoch_split: dict[str, Any] | None  # advtrain.reports.run.epoch_split: where the epochs' wall time went
    advtrain_version: str
    recipe: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
