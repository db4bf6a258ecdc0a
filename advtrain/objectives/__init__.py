"""Training objectives registry (``objective.name`` in recipes).

An entry is a constructor from params: ``OBJECTIVES.get(name).build(params, attack=<built attack or
None>)`` is the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from advtrain.attacks import ATTACKS
from advtrain.objectives.losses import weighted_mean
from advtrain.objectives.objectives import (
    AdversarialObjective,
    CleanObjective,
    LossOutput,
    TradesObjective,
    TradesParams,
)
from advtrain.objectives.perceptual import PerceptualObjective
from advtrain.objectives.protocol import Objective
from advtrain.registry import Registry

OBJECTIVES = Registry("objective")
OBJECTIVES.add("clean", CleanObjective)
OBJECTIVES.add("adversarial", AdversarialObjective)
OBJECTIVES.add("trades", TradesObjective, TradesParams)
OBJECTIVES.add("perceptual", PerceptualObjective)


def ignored_attack_params(objective: str, attack: str, params: Any, *, section: str = "attack",
                          keys: Collection[str] | None = None) -> list[str]:
    """One problem per key of attack ``attack``'s ``params`` that ``objective`` ignores but that is set.

    "Set" means off the attack's default: a key left at its default asks for nothing (every
    resolved recipe, advtrain's recipe.yaml and a checkpoint's stored recipe included, writes them
    all), while any other value asks for something the objective would silently not do. ``keys``
    limits the check to the keys written in ``section`` (default: all of them).
    """
    spec = OBJECTIVES.get(objective).constructor
    used = getattr(spec, "attack_keys", {}).get(attack)
    if used is None or params is None:
        return []
    default = ATTACKS.get(attack).default_params()
    return [f"{section}.{key}: objective '{objective}' ignores it ({spec.ignores_because}); remove it"
            for key in (f.name for f in dataclasses.fields(params))
            if key not in used and (keys is None or key in keys) and getattr(params, key) != getattr(default, key)]


__all__ = ["OBJECTIVES", "LossOutput", "Objective", "ignored_attack_params", "weighted_mean"]
