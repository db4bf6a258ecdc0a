"""The validated recipe: typed sections, each component as its registered name plus params."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from advtrain.config.schema import EvalConfig, OutputConfig, ScheduleConfig, TrainConfig


@dataclass
class Component:
    """A component section after validation: registered name plus its params dataclass."""

    name: str
    params: Any


@dataclass
class Recipe:
    """A validated recipe: typed sections plus the resolved plain dict it came from.

    A component section is reached one way: ``recipe.components["attack"]`` (None when absent).
    """

    name: str
    seed: int
    device: str
    precision: str
    components: dict[str, Component | None]
    schedule: ScheduleConfig
    train: TrainConfig
    eval: EvalConfig
    output: OutputConfig
    resolved: dict[str, Any] = field(repr=False)
    source: str | None = None
    runtime: Any = None  # RuntimeConfig (threads)
    log: Any = None  # LogConfig (csv, tensorboard)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (fractions kept as written, e.g. ``8/255``)."""
        return yaml.safe_dump(self.resolved, sort_keys=False, default_flow_style=None, width=100)
