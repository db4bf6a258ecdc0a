"""Training that stops before its last epoch: the interruption, and what each kind of stop says.

Each message names where training stopped, which checkpoint was kept, and what to do next; the
loop raises them (signals: :class:`TrainingInterrupted`, exit 130; divergence and out of memory:
user errors, exit 2).
"""

from __future__ import annotations

from pathlib import Path


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a step; a resumable checkpoint was written."""


def interrupt_message(signal_name: str, saved: Path, *, epoch: int, batch: int | None = None) -> str:
    """Stopped by a signal after ``batch`` batches of (0-based) ``epoch``, or at its end (``batch`` None)."""
    where = f"after batch {batch} of epoch {epoch + 1}" if batch is not None else f"after epoch {epoch + 1}"
    return (f"stopped by {signal_name} {where}; saved {saved}. Continue with: advtrain run <recipe> --resume "
            f"(same recipe and overrides).")


def selection_interrupt_message(signal_name: str, last: Path, *, epoch: int, stage: str, done: int,
                                total: int) -> str:
    """Stopped by a signal in the coreset selection at the start of (0-based) ``epoch``."""
    where = (f"after batch {done} of {total} of the coreset selection for epoch {epoch + 1}" if stage == "attack"
             else f"in the coreset selection for epoch {epoch + 1}, before its solver")
    if not last.exists():
        return (f"stopped by {signal_name} {where}; no epoch had finished, so there was nothing to save. Start "
                f"again: advtrain run <recipe> --overwrite (same recipe and overrides).")
    return (f"stopped by {signal_name} {where}; {last} (the end of epoch {epoch}) is kept and the selection is "
            f"redone on resume. Continue with: advtrain run <recipe> --resume (same recipe and overrides).")


def divergence_message(epoch: int, bad_batch: int, bad_kind: str | None, kept: str) -> str:
    """A non-finite loss or gradient at (0-based) ``bad_batch`` of ``epoch``; ``kept`` says what was saved."""
    return (f"non-finite {bad_kind or 'loss'} at epoch {epoch + 1}, batch {bad_batch + 1}; {kept}. Try a lower "
            f"optim.lr, precision=fp32, or train.grad_clip_value; continue with --resume --force after changing "
            f"the recipe.")


def rollback_kept(saved: Path | None, batch: int, last: Path) -> str:
    """What a divergence kept: the rolled-back state ``saved`` (before ``batch``), else the last checkpoint."""
    if saved is not None:
        return f"the state before batch {batch + 1} is saved in {saved}"
    return (f"the weights already overflowed, so {last} (the last finite checkpoint) is kept"
            if last.exists() else "no finite checkpoint was written yet")


def oom_message(epoch: int, batch: int, batch_size: int, last: Path) -> str:
    """CUDA ran out of memory at (0-based) ``batch`` of ``epoch``."""
    kept = f"{last} (end of the last completed epoch) is kept" if last.exists() else "no checkpoint yet"
    return (f"CUDA ran out of memory at epoch {epoch + 1}, batch {batch + 1} (adversarial training keeps the "
            f"attack's activations too). Use a smaller data.batch_size (now {batch_size}) or "
            f"precision=bf16; {kept}.")
