"""Where an epoch's wall time goes: a stopwatch that charges every second to exactly one named part.

An epoch runs selection, training, validation, the overfitting guard, checkpoint and coreset
writes (``save``) and the metrics and loggers writes (``log``). Timing each around its call and
subtracting from the epoch's time would leave whatever sits between them unnamed and could go
negative; instead one clock is always running on exactly one part (``other`` when none is
named), so the parts add up to the epoch's time by construction and none is negative.

On CUDA the work of a part is queued, not done, when its Python call returns: reading the clock
then would charge the part's kernels to whatever part waits for them next. So every switch of
part first waits for the device (``sync``; one ``torch.cuda.synchronize`` per switch, a handful
per epoch, at points where the loop is about to wait anyway). Nothing is synchronised inside a
part: training keeps its one host read per ``train.log_every`` window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from advtrain.io.run_records import EPOCH_PARTS as PARTS

OTHER = "other"


class PhaseClock:
    """Charges elapsed time to the innermost open part; :meth:`lap` closes an epoch and starts the next.

    Args:
        sync: Waits for queued device work before the clock is read at a switch (None: nothing to wait for).
        clock: Seconds from an arbitrary origin (tests pass a fake one).
    """

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self._sync = sync
        self._clock = clock
        self._parts = dict.fromkeys(PARTS, 0.0)
        self._open = [OTHER]
        self._since = clock()

    @classmethod
    def for_device(cls, device: torch.device) -> PhaseClock:
        """A clock that synchronises ``device`` at each switch when it is a CUDA device."""
        if device.type == "cuda":
            return cls(lambda: torch.cuda.synchronize(device))
        return cls()

    def _switch(self) -> None:
        """Charge the time since the last switch to the part open until now."""
        if self._sync is not None:
            self._sync()
        now = self._clock()
        self._parts[self._open[-1]] += now - self._since
        self._since = now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block to part ``name`` (a part opened inside it takes its own time back)."""
        if name not in self._parts:
            raise ValueError(f"unknown epoch part '{name}' (one of: {', '.join(PARTS)})")
        self._switch()
        self._open.append(name)
        try:
            yield
        finally:
            self._switch()
            self._open.pop()

    def split(self) -> dict[str, float]:
        """The parts so far (seconds, every part of :data:`PARTS`) and ``total``, their exact sum."""
        self._switch()
        parts = dict(self._parts)
        return {**parts, "total": sum(parts.values())}

    def lap(self) -> dict[str, float]:
        """The epoch's :meth:`split`, then every part back to zero: the next epoch starts now.

        Laps follow each other without a gap, so the epochs' totals add up to the loop's wall time.
        """
        out = self.split()
        self._parts = dict.fromkeys(PARTS, 0.0)
        return out
