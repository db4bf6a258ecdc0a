"""One adversarial coreset selection: attack everything, score, solve (paper Alg. 1, one step)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.selection.features import FeatureTiming, gradient_features
from advtrain.train import distributed
from advtrain.train.device import derive_seed, generator
from advtrain.train.distributed import DistContext

#: Selectors that use only the labels (their selection pass attacks nothing).
FEATURELESS = ("full", "random")


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
                   device: torch.device, amp_dtype: torch.dtype | None = None,
                   ctx: DistContext | None = None) -> CoresetResult:
    """Build the adversarial points and gradient features of the whole training set and solve.

    The solver's randomness (batch partition, random fill) comes from ``(seed, epoch)`` so a
    selection is reproducible and a resumed run re-selects exactly as the original would. Data
    parallel: each rank attacks and scores its contiguous shard, the features are gathered in
    order, rank 0 solves and broadcasts the coreset, so every rank trains on the same subset.
    """
    from advtrain.selection import SELECTORS

    ctx = ctx or DistContext()
    start = time.perf_counter()
    params = selector.params
    if selector.name in FEATURELESS:  # a random subset needs no adversarial points: no attack pass
        labels = data.train.labels.cpu()
        feats, timing = torch.zeros(len(labels), 0, device=device), FeatureTiming()
    else:
        feats, labels, timing = gradient_features(
            model, objective, data.train, batch_size=data.batch_size, device=device, amp_dtype=amp_dtype,
            bias_only=getattr(params, "features", "weights") == "bias",
            indices=distributed.shard_range(ctx, len(data.train)) if ctx.enabled else None)
        feats, labels = distributed.gather_rows(ctx, feats), distributed.gather_rows(ctx, labels)
    solve_start = time.perf_counter()
    indices = weights = None
    if ctx.is_main:
        result = SELECTORS.get(selector.name).builder(params, feats, labels,
                                                       generator=generator(derive_seed(seed, "select", epoch)),
                                                       batch_size=data.batch_size)
        indices, weights = result.indices, result.weights.float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    solver_s = time.perf_counter() - solve_start
    indices = distributed.broadcast_tensor(ctx, indices, dtype=torch.int64, device=device)
    weights = distributed.broadcast_tensor(ctx, weights, dtype=torch.float32, device=device)
    return CoresetResult(indices.cpu(), weights.cpu(), labels.cpu(), timing.attack_s,
                         timing.features_s, solver_s, time.perf_counter() - start)
