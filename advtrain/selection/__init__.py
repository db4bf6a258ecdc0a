"""Adversarial coreset selection: features, solvers and the selector registry."""

from advtrain.selection.selectors import SELECTORS, Selection, class_budgets

__all__ = ["SELECTORS", "Selection", "class_budgets"]
