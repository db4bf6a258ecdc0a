"""Optimizers and learning-rate schedules (``optim`` and ``lr_schedule`` in recipes)."""

from advtrain.optim.lr import LR_SCHEDULES, LrFn
from advtrain.optim.optimizers import OPTIMIZERS

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "LrFn"]
