"""How large a coreset the recipe's selector makes: what a stored coreset is checked against on resume.

The rule is :func:`advtrain.selection.selectors.select_with`'s: the budget is
k = max(1, round(fraction·n)); sample-wise selection returns exactly k samples (per class too: the
class budgets sum to k), batch-wise selection whole batches, at least each group's budget and less
than two candidate batches more per group (one extra batch, plus a short one among the picks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def coreset_size_bounds(params: Any, labels: Tensor, batch_size: int) -> tuple[int, int] | None:
    """(smallest, largest) coreset of selector ``params`` on a split with ``labels``; None: no budget."""
    fraction = getattr(params, "fraction", None)
    if fraction is None:
        return None
    n = len(labels)
    k = min(n, max(1, round(fraction * n)))
    if getattr(params, "granularity", "sample") == "sample":
        return k, k
    groups = len(torch.unique(labels.cpu())) if getattr(params, "per_class", False) else 1
    candidate = getattr(params, "batch_size", None) or batch_size
    return k, min(n, k + groups * 2 * candidate)
