"""The table from a recipe's component section to the registry its ``name`` is looked up in."""

from __future__ import annotations

from typing import Any

from advtrain.attacks import ATTACKS
from advtrain.data import DATASETS
from advtrain.models import MODELS
from advtrain.objectives import OBJECTIVES
from advtrain.optim import LR_SCHEDULES, OPTIMIZERS
from advtrain.selection import SELECTORS

#: Section → registry (``MODELS`` is timm's registry seen through the same interface).
SECTION_REGISTRIES: dict[str, Any] = {
    "data": DATASETS,
    "model": MODELS,
    "objective": OBJECTIVES,
    "attack": ATTACKS,
    "selector": SELECTORS,
    "optim": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
}
