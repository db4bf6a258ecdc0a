"""Learning-rate schedules as pure functions of training progress (in epochs, fractional).

Every schedule returns a multiplier of ``optim.lr`` for a point ``epoch`` ∈ [0, epochs); the loop
calls it every step, so per-epoch drops (multistep) and per-step ramps (cyclic, warm-up) share one
mechanism and the schedule needs no state of its own in a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from advtrain.params import param
from advtrain.registry import Registry

LR_SCHEDULES = Registry("lr schedule")

LrFn = Callable[[float, int], float]


@dataclass
class ConstantParams:
    """Constant learning rate (after an optional linear warm-up)."""

    warmup_epochs: float = param(0.0, ge=0, le=100_000, help="linear warm-up from 0 over this many epochs")


@dataclass
class MultiStepParams:
    """Multiply by ``gamma`` at each milestone epoch (Madry/TRADES/ACS schedules)."""

    milestones: list[int] = param([80, 100], ge=0, le=100_000, help="epochs at which the lr is multiplied by gamma")
    gamma: float = param(0.1, gt=0, le=1e30,  # huge values only diverge, which the loop reports
                          help="decay factor")
    warmup_epochs: float = param(0.0, ge=0, le=100_000, help="linear warm-up from 0 over this many epochs")


@dataclass
class CosineParams:
    """Cosine decay to ``min_factor``·lr."""

    min_factor: float = param(0.0, ge=0, le=1, help="final lr as a fraction of optim.lr")
    warmup_epochs: float = param(0.0, ge=0, le=100_000, help="linear warm-up from 0 over this many epochs")


@dataclass
class CyclicParams:
    """Triangular one-cycle 0 → lr → 0 (Fast-AT, Wong et al. 2020)."""

    peak: float = param(0.4, gt=0, lt=1, help="fraction of training at which the lr peaks")


def _warmup(epoch: float, warmup: float) -> float:
    return min(1.0, (epoch + 1e-12) / warmup) if warmup > 0 else 1.0


@LR_SCHEDULES.register("constant", ConstantParams)
def constant(params: ConstantParams) -> LrFn:
    """Constant learning rate."""
    return lambda epoch, total: _warmup(epoch, params.warmup_epochs)


@LR_SCHEDULES.register("multistep", MultiStepParams)
def multistep(params: MultiStepParams) -> LrFn:
    """Step decay at fixed epochs."""

    def factor(epoch: float, total: int) -> float:
        drops = sum(1 for m in params.milestones if epoch >= m)
        return params.gamma**drops * _warmup(epoch, params.warmup_epochs)

    return factor


@LR_SCHEDULES.register("cosine", CosineParams)
def cosine(params: CosineParams) -> LrFn:
    """Cosine annealing over the whole run."""

    def factor(epoch: float, total: int) -> float:
        progress = min(1.0, epoch / max(total, 1))
        value = params.min_factor + (1 - params.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return value * _warmup(epoch, params.warmup_epochs)

    return factor


@LR_SCHEDULES.register("cyclic", CyclicParams)
def cyclic(params: CyclicParams) -> LrFn:
    """Linear up to the peak, then linear down to zero at the end of training."""

    def factor(epoch: float, total: int) -> float:
        progress = min(1.0, epoch / max(total, 1))
        if progress <= params.peak:
            return progress / params.peak
        return max(0.0, (1 - progress) / (1 - params.peak))

    return factor
