"""advtrain: declarative, config-driven efficient adversarial training.

Adversarial coreset selection (Dolatabadi et al., ECCV 2022) on top of standard adversarial
training objectives, driven by YAML recipes and a Typer CLI. The Python API is one function:
``advtrain.load(checkpoint) -> nn.Module`` (:func:`advtrain.api.load`), imported on first use so
that ``import advtrain`` stays free of torch (the CLI sets OpenMP's wait policy before torch loads).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from advtrain.api import load

        return load
    raise AttributeError(f"module 'advtrain' has no attribute {name!r}")
