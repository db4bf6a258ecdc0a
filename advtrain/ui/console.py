"""The one module that prints: rich console, progress bars, tables and the error panel.

Everything else returns values or raises; the training loop talks to a :class:`Reporter`, so a
test or a non-zero DDP rank can pass :class:`SilentReporter` instead.

Text passed in is never read as rich markup: paths, run names and error messages come from users,
and ``[/b]`` in a folder name must print as written, not crash. Colour is chosen with ``style=``
for the whole line. Nor does it reach the terminal as control codes: a recipe name, a path or a
checkpoint's metadata may hold ESC/OSC sequences (clear the screen, set the window title, write the
clipboard with OSC 52), so every string printed here goes through :func:`safe_text` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_console: Console | None = None
_err_console: Console | None = None
#: Characters shown escaped: C0 and C1 control codes (ESC, BEL, CSI, ...) but newline and tab, DEL, and the
#: bidirectional overrides and isolates that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_text(text: object) -> str:
    """``text`` with every terminal control character written as a visible escape (``\\x1b``, ``\\u202e``)."""
    text = str(text)
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def _plain(text: object) -> str:
    """Safe text that rich prints as written (no markup)."""
    return escape(safe_text(text))


def console() -> Console:
    """The shared console (created on first use, so importing prints nothing)."""
    global _console  # noqa: PLW0603 - a single terminal is the one legitimate global here
    if _console is None:
        _console = Console(highlight=False, soft_wrap=False, width=None if os.isatty(1) else 120)
    return _console


def err_console() -> Console:
    """The console on stderr: errors, warnings and status lines, so stdout holds only a command's output."""
    global _err_console  # noqa: PLW0603 - the terminal's second stream
    if _err_console is None:
        _err_console = Console(stderr=True, highlight=False, soft_wrap=False, width=None if os.isatty(2) else 120)
    return _err_console


def print_error(title: str, message: str) -> None:
    """One red panel for a user error on stderr; no traceback."""
    err_console().print(Panel(_plain(message), title=f"[bold red]{_plain(title)}", border_style="red",
                              expand=False))


def info(message: str, *, style: str | None = None) -> None:
    """One line of plain text (never markup), optionally in one ``style`` such as ``"green"``."""
    console().print(_plain(message), style=style)


def status(message: str, *, style: str | None = None) -> None:
    """A line about what a command did (``ok: ... is valid``, ``wrote ...``), on stderr beside its output."""
    err_console().print(_plain(message), style=style)


def warn(message: str) -> None:
    err_console().print(f"[yellow]warning:[/] {_plain(message)}")


def print_json(data: Any) -> None:
    """``data`` as JSON on stdout, nothing else (``--json``): NaN and infinities become null."""
    import json
    import math
    import sys

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    sys.stdout.write(json.dumps(clean(data), indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_traceback(err: BaseException) -> None:
    """``--debug``: the traceback of ``err`` and of the exception it was raised from."""
    import traceback

    err_console().print(safe_text("".join(traceback.format_exception(err))), markup=False, highlight=False)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=_plain(title), show_lines=False)
    for column in columns:
        table.add_column(_plain(column))
    for row in rows:
        table.add_row(*[_plain(cell) for cell in row])
    console().print(table)


def print_text(text: str) -> None:
    """``text`` on stdout exactly as given (no wrapping at the terminal width): output others may parse."""
    import sys

    text = safe_text(text)  # newline and tab kept: YAML and tables stay as written
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


@contextmanager
def output_to_stderr(enabled: bool = True) -> Iterator[None]:
    """While inside (when ``enabled``), tables, progress and info lines go to stderr: stdout is for ``--json``."""
    global _console  # noqa: PLW0603 - the same single terminal, one stream over
    if not enabled:
        yield
        return
    previous, _console = _console, err_console()
    try:
        yield
    finally:
        _console = previous


class Reporter(Protocol):
    """What the training loop reports; the console implements it, tests may stay silent."""

    def start(self, total_epochs: int, first_epoch: int) -> None: ...
    def epoch_start(self, epoch: int, batches: int, phase: str) -> None: ...
    def progress(self, done: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None: ...
    def selection(self, epoch: int, stage: str, done: int, total: int) -> None:
        """The coreset selection before ``epoch``: ``attack`` batches ``done`` of ``total``, or the ``solver``."""
    def message(self, text: str, *, style: str | None = None) -> None: ...
    def stop(self) -> None: ...


class SilentReporter:
    """A reporter that prints nothing."""

    def start(self, total_epochs: int, first_epoch: int) -> None: ...
    def epoch_start(self, epoch: int, batches: int, phase: str) -> None: ...
    def progress(self, done: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None: ...
    def selection(self, epoch: int, stage: str, done: int, total: int) -> None: ...
    def message(self, text: str, *, style: str | None = None) -> None: ...
    def stop(self) -> None: ...


def _bar_columns() -> tuple[Any, ...]:
    """The columns every progress bar shares: bar, done/total, elapsed, eta."""
    return (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


class ProgressReporter:
    """Epoch and batch bars with ETA, running loss/accuracy and the last validation numbers."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            *_bar_columns(),
            TextColumn("{task.fields[status]}"),
            console=console(),
            transient=False,
        )
        self._epoch_task: TaskID | None = None
        self._batch_task: TaskID | None = None
        self._select = _SelectionBar(self._progress)
        self._val = ""

    def start(self, total_epochs: int, first_epoch: int) -> None:
        self._progress.start()
        self._epoch_task = self._progress.add_task("epochs", total=total_epochs, completed=first_epoch,
                                                   status="")

    def epoch_start(self, epoch: int, batches: int, phase: str) -> None:
        if self._batch_task is not None:
            self._progress.remove_task(self._batch_task)
        self._batch_task = self._progress.add_task(_plain(f"epoch {epoch + 1} [{phase}]"), total=batches, status="")

    def progress(self, done: int, loss: float, acc: float) -> None:
        """``done`` batches of the epoch trained; ``loss``/``acc`` are the epoch's means so far.

        Called every ``train.log_every`` batches (the loop reads its device-side sums only then).
        """
        assert self._batch_task is not None
        self._progress.update(self._batch_task, completed=done,
                              status=f"loss {loss:.4f}  train acc {acc:.3f}")

    def selection(self, epoch: int, stage: str, done: int, total: int) -> None:
        """A bar with ETA over the attack and feature batches, then one for the solver while it runs."""
        self._select(f"select for epoch {epoch + 1}", stage, done, total)

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        self._select.clear()
        val = summary.get("val") or {}
        if val:
            self._val = "  ".join(f"{k} {v:.3f}" for k, v in val.items())
        assert self._epoch_task is not None
        status = f"loss {summary.get('train_loss', float('nan')):.4f}"
        if self._val:
            status += f"  val: {self._val}"
        self._progress.update(self._epoch_task, advance=1, status=status)
        self._progress.console.print(_plain(_epoch_line(epoch, summary)))

    def message(self, text: str, *, style: str | None = None) -> None:
        self._progress.console.print(_plain(text), style=style)

    def stop(self) -> None:
        self._progress.stop()


class _SelectionBar:
    """The bars of one coreset selection pass on a live ``Progress``: attack batches with ETA, then the solver.

    Finished bars stay (they show what the pass took) until :meth:`clear` or the next pass.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, label: str, stage: str, done: int, total: int) -> None:
        if stage == "attack" and done <= 1 or stage == "solver" and done == 0 and "solver" in self._tasks:
            self.clear()  # a new pass
        if stage not in self._tasks:
            what = "attack+features" if stage == "attack" else "solver"
            self._tasks[stage] = self._progress.add_task(_plain(f"{label} [{what}]"), status="", total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)

    def clear(self) -> None:
        for task in self._tasks.values():
            self._progress.remove_task(task)
        self._tasks = {}


class SelectionProgress:
    """``advtrain select``'s bars: a context manager, called as ``progress(stage, done, total)``."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._progress = Progress(TextColumn("{task.description}"), *_bar_columns(), console=console(),
                                  transient=False)
        self._bar = _SelectionBar(self._progress)

    def __enter__(self) -> SelectionProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._bar(self._label, stage, done, total)


def _epoch_line(epoch: int, summary: dict[str, Any]) -> str:
    parts = [f"epoch {epoch + 1:>3}", f"[{summary.get('phase', '')}]"]
    if summary.get("phase") != "skip":
        parts.append(f"loss {summary['train_loss']:.4f} acc {summary['train_acc']:.3f}")
    if summary.get("coreset_size") is not None:
        parts.append(f"coreset {summary['coreset_size']}")
    sel = summary.get("selection")
    if sel:
        parts.append(f"select {sel['total_s']:.1f}s")
    for key, value in (summary.get("val") or {}).items():
        parts.append(f"val {key} {value:.3f}")
    parts.append(f"{summary.get('epoch_time', 0.0):.1f}s")
    return "  ".join(parts)


class EvalProgress:
    """Rich bars for ``advtrain eval``: one per attack, one per AutoAttack stage (points still robust).

    Called as ``progress(label, done, total)`` (the evaluation's ``Progress`` callback); a context
    manager that starts and stops the live display.
    """

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            *_bar_columns(),
            console=console(),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> EvalProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(_plain(label), total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)
