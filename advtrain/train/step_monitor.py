"""Training statistics and the non-finite watch, kept on the device between sync points.

Turning a step's loss, correct count or gradient check into a Python number makes the host wait
for the GPU's whole queue, so the next step cannot be queued while this one runs. The loop
instead adds each step's figures into one device tensor and reads it (one sync) every
``train.log_every`` steps, at the end of an epoch and when it must stop.

A non-finite loss or gradient can then only be noticed at the next read, after a few more
optimizer steps have run on broken weights. :class:`FiniteState` is a device copy of the
training state taken at every read that found the window finite: a divergence restores it, so
the run still keeps its last finite state and stops within one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.train.progress import EpochProgress

#: Order of the entries of the device-side statistics vector.
_LOSS, _CORRECT, _SEEN, _FIRST_BAD, _BAD_KIND, _STOP = range(6)
#: What went non-finite first (``_BAD_KIND``).
BAD_KINDS = {1.0: "loss", 2.0: "gradients"}


@dataclass
class StepTotals:
    """The host-side reading of a :class:`StepMonitor`."""

    loss_sum: float
    correct: float
    seen: float
    first_bad_batch: int | None
    bad_kind: str | None
    stop: bool


class StepMonitor:
    """Per-epoch running sums (loss·count, correct, count) plus the first non-finite batch, on device.

    A resumed epoch starts from the sums it had. Sums are float64, so counts stay exact and the loss
    sum is the same number a Python float accumulation gave (bit-identical resumes).
    """

    def __init__(self, device: torch.device, *, loss_sum: float = 0.0, correct: int = 0, seen: int = 0) -> None:
        values = [float(loss_sum), float(correct), float(seen), -1.0, 0.0, 0.0]
        self.values = torch.tensor(values, dtype=torch.float64).to(device, non_blocking=True)

    def record(self, batch: int, loss_value: Tensor, correct: Tensor, count: Tensor | int,
               grads_finite: Tensor | None = None, stop: Tensor | None = None) -> None:
        """Add one step (all arguments may be device tensors; nothing is read back)."""
        v = self.values
        loss64 = loss_value.detach().to(torch.float64)
        # A Python count enters as a scalar argument: a tensor made from it would be a host→device copy.
        count64 = count.to(torch.float64) if isinstance(count, Tensor) else float(count)
        v[_LOSS] += loss64 * count64
        v[_CORRECT] += correct.detach().to(torch.float64)
        v[_SEEN] += count64
        loss_bad = ~torch.isfinite(loss64)
        bad = loss_bad if grads_finite is None else loss_bad | ~grads_finite
        kind = torch.where(loss_bad, 1.0, 2.0).to(torch.float64)
        first = (v[_FIRST_BAD] < 0) & bad
        v[_BAD_KIND] = torch.where(first, kind, v[_BAD_KIND])
        v[_FIRST_BAD] = torch.where(first, float(batch), v[_FIRST_BAD])
        if stop is not None:
            v[_STOP] = torch.maximum(v[_STOP], stop.detach().to(torch.float64))

    def read(self) -> StepTotals:
        """One host sync: the sums so far and whether (and where) something went non-finite."""
        loss, correct, seen, first_bad, kind, stop = self.values.tolist()
        return StepTotals(loss, correct, seen, int(first_bad) if first_bad >= 0 else None,
                          BAD_KINDS.get(kind), stop > 0)


def grads_finite(model: nn.Module) -> Tensor:
    """A device bool: are all gradient entries finite? (one fused norm over all gradients, no sync)."""
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool, device=next(model.parameters()).device)
    foreach_norm = getattr(torch, "_foreach_norm", None)
    norms = foreach_norm(grads) if foreach_norm is not None else [g.norm() for g in grads]
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum())


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value


@dataclass
class FiniteState:
    """A device copy of everything a divergence must roll back: weights, optimizer, RNG, position."""

    progress: EpochProgress
    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng_cpu: Tensor
    rng_device: Tensor | None

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, *,
             progress: EpochProgress, step: int) -> FiniteState:
        rng_device = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(progress, step, _clone(model.state_dict()), _clone(optimizer.state_dict()),
                   torch.get_rng_state(), rng_device)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        torch.set_rng_state(self.rng_cpu)
        if self.rng_device is not None:
            torch.cuda.set_rng_state(self.rng_device, device)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.model.values() if t.is_floating_point())
