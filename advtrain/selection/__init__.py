"""Adversarial coreset selection: features, solvers and the selector registry."""

from advtrain.coreset import Coreset, SelectionTiming
from advtrain.selection.selectors import SELECTORS, class_budgets

__all__ = ["SELECTORS", "Coreset", "SelectionTiming", "class_budgets"]
