"""Where a run stands: :class:`RunState`, the one record a checkpoint saves and a resume restores.

Everything of a run that changes as it trains and is not a tensor lives here (the epoch and step
counters, the run id, the best model so far, the coreset in use, an interrupted epoch), so the
loop keeps it in one place and :mod:`advtrain.io.checkpoint` writes and reads it as one value.

:class:`EpochProgress` is where an epoch stands: batches done, their running sums, and the
epoch's selection timings. A mid-epoch checkpoint (a signal, a divergence) stores it in its
metadata as ``extra.in_epoch`` (``{epoch, batch, partial: {loss_sum, correct, seen, selection}}``, the form
:func:`advtrain.io.checkpoint.load` checks). A resume continues the epoch right after ``batch``
with these sums, so the epoch's metrics line is the one an uninterrupted run writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from advtrain.coreset import Coreset


class Sums(Protocol):
    """The running sums of a statistics read (:class:`advtrain.train.step_monitor.StepTotals`)."""

    loss_sum: float
    correct: float
    seen: float


@dataclass(frozen=True)
class EpochProgress:
    """Epoch ``epoch`` with its first ``batch`` batches trained.

    Attributes:
        epoch: The (0-based) epoch.
        batch: Batches of it already trained (a resume skips them).
        loss_sum: Σ loss·count over those batches (float64 sums: bit-identical resumes).
        correct: Correctly classified training samples among them.
        seen: Samples among them.
        selection: The ``selection`` entry of the epoch's metrics line (timings of the selection
            pass run at its start), or None when the epoch did not select.
    """

    epoch: int
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    selection: dict[str, float] | None = None

    def advanced(self, batch: int, totals: Sums) -> EpochProgress:
        """The same epoch after ``batch`` batches, with the sums a statistics read returned."""
        return replace(self, batch=batch, loss_sum=totals.loss_sum, correct=int(totals.correct),
                       seen=int(totals.seen))

    def to_extra(self) -> dict[str, Any]:
        """The checkpoint metadata ``extra`` that resumes here."""
        partial = {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                   "selection": self.selection}
        return {"in_epoch": {"epoch": self.epoch, "batch": self.batch, "partial": partial}}

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> EpochProgress | None:
        """Read ``extra.in_epoch`` of a checked checkpoint (None: it was saved at the end of an epoch).

        Older checkpoints may leave sums out of ``partial`` (a divergence before the first
        statistics read saved only the selection): they count as zero.
        """
        in_epoch = (extra or {}).get("in_epoch")
        if not in_epoch:
            return None
        partial = in_epoch.get("partial") or {}
        return cls(epoch=int(in_epoch["epoch"]), batch=int(in_epoch["batch"]),
                   loss_sum=float(partial.get("loss_sum", 0.0)), correct=int(partial.get("correct", 0)),
                   seen=int(partial.get("seen", 0)), selection=partial.get("selection"))


@dataclass
class RunState:
    """What a run has done so far; a checkpoint stores it beside the model and optimizer tensors.

    Attributes:
        epoch: The next epoch to train (0-based); after a mid-epoch save, the interrupted one.
        step: Optimizer steps taken (skipped epochs count their batches).
        run_id: The run this state belongs to (recorded in the run folder and in every checkpoint).
        best_metric: Best validation metric so far (robust accuracy, else clean), None before any.
        best_epoch: The (0-based) epoch of ``best_metric``.
        coreset: The coreset the coreset epochs train on (None before the first selection).
        in_epoch: The interrupted epoch a mid-epoch checkpoint continues (None: start ``epoch`` afresh).
    """

    epoch: int = 0
    step: int = 0
    run_id: str | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    coreset: Coreset | None = None
    in_epoch: EpochProgress | None = None

    def improved(self, metric: float, epoch: int) -> bool:
        """Record ``metric`` of ``epoch``; True when it is the best so far (ties keep the earlier epoch)."""
        if self.best_metric is not None and metric <= self.best_metric:
            return False
        self.best_metric, self.best_epoch = metric, epoch
        return True
