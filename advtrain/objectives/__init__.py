"""Training objectives registry (``objective.name`` in recipes)."""

from advtrain.objectives.losses import weighted_mean
from advtrain.objectives.objectives import (
    AdversarialObjective,
    CleanObjective,
    LossOutput,
    TradesObjective,
    TradesParams,
)
from advtrain.objectives.perceptual import PerceptualObjective
from advtrain.registry import Registry

OBJECTIVES = Registry("objective")
OBJECTIVES.add("clean", CleanObjective)
OBJECTIVES.add("adversarial", AdversarialObjective)
OBJECTIVES.add("trades", TradesObjective, TradesParams)
OBJECTIVES.add("perceptual", PerceptualObjective)

__all__ = ["OBJECTIVES", "LossOutput", "weighted_mean"]
