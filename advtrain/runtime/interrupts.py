"""SIGINT/SIGTERM: stop with the command's own message and exit 130.

Inside the training epochs, :class:`StopRequest` only records the signal: the loop finishes the
step (or the batch of a coreset selection pass), saves, and says how to resume. Everything else a
command does (building, the final test evaluation, ``advtrain eval``) runs inside
:func:`on_signals`, which turns either signal into
:class:`CommandInterrupted` carrying the command's wording; the CLI prints it as one panel and
exits with 130.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CommandInterrupted(Exception):
    """A signal stopped a command outside training; ``str(err)`` says what was kept and what to do."""


@contextmanager
def on_signals(describe: Callable[[str], str]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM raise ``CommandInterrupted(describe("SIGTERM"))``.

    Handlers installed inside (the training loop's) take precedence while they are active; the
    previous handlers come back on exit. Outside the main thread signals cannot be handled, so
    this does nothing there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise CommandInterrupted(describe(signal.Signals(signum).name))

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopRequest:
    """SIGINT/SIGTERM during training: remembered, so the loop stops after the current step and saves.

    While :meth:`installed` is active, the first signal is only recorded (``notify`` says so); a
    second SIGINT raises ``KeyboardInterrupt`` at once. Outside the main thread nothing is installed.
    """

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self._notify = notify

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name (``signal`` before one arrived)."""
        return signal.Signals(self.signum).name if self.signum else "signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._notify(f"{signal.Signals(signum).name}: finishing the current step, then saving...")

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT/SIGTERM here while inside; the previous handlers come back on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
