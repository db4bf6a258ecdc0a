"""Where an epoch stands: batches done, their running sums, and the epoch's selection timings.

A mid-epoch checkpoint (a signal, a divergence) stores it in its metadata as ``extra.in_epoch``
(``{epoch, batch, partial: {loss_sum, correct, seen, selection}}``, the form
:func:`advtrain.io.checkpoint.load` checks). A resume continues the epoch right after ``batch``
with these sums, so the epoch's metrics line is the one an uninterrupted run writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advtrain.train.step_monitor import StepTotals


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

    def advanced(self, batch: int, totals: StepTotals) -> EpochProgress:
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
