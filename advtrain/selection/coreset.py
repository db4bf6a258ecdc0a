"""One adversarial coreset selection: attack everything, score, solve (paper Alg. 1, one step)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.selection.features import gradient_features
from advtrain.train.device import derive_seed, generator


@dataclass
class CoresetResult:
    """Selected sample indices (into the training split), weights, their labels and timings."""

    indices: Tensor
    weights: Tensor
    labels: Tensor
    attack_s: float
    features_s: float
    solver_s: float
    total_s: float

    def timing(self) -> dict[str, float]:
        return {"attack_s": self.attack_s, "features_s": self.features_s, "solver_s": self.solver_s,
                "total_s": self.total_s, "size": int(len(self.indices))}


def select_coreset(model: nn.Module, objective: Any, selector: Any, data: Any, *, seed: int, epoch: int,
                   device: torch.device, amp_dtype: torch.dtype | None = None) -> CoresetResult:
    """Build the adversarial points and gradient features of the whole training set and solve.

    The solver's randomness (batch partition, random fill) comes from ``(seed, epoch)`` so a
    selection is reproducible and a resumed run re-selects exactly as the original would.
    """
    from advtrain.selection import SELECTORS

    start = time.perf_counter()
    params = selector.params
    feats, labels, timing = gradient_features(
        model, objective, data.train, batch_size=data.batch_size, device=device, amp_dtype=amp_dtype,
        bias_only=getattr(params, "features", "weights") == "bias")
    solve_start = time.perf_counter()
    result = SELECTORS.get(selector.name).builder(params, feats, labels,
                                                   generator=generator(derive_seed(seed, "select", epoch)),
                                                   batch_size=data.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    solver_s = time.perf_counter() - solve_start
    return CoresetResult(result.indices.cpu(), result.weights.float().cpu(), labels.cpu(), timing.attack_s,
                         timing.features_s, solver_s, time.perf_counter() - start)
