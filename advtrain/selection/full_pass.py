"""One selection pass over the whole training set: attack everything, score, solve (paper Alg. 1, one step)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advtrain.coreset import Coreset, SelectionTiming
from advtrain.runtime import distributed
from advtrain.runtime.distributed import DistContext
from advtrain.runtime.seeding import derive_seed, generator
from advtrain.selection.features import gradient_features
from advtrain.selection.selectors import Selector

#: ``progress(stage, done, total)``: stage ``"attack"`` after each batch of the attack and feature
#: pass, ``"solver"`` with done 0 before the solver and 1 after it. It may raise to stop the pass.
SelectionProgress = Callable[[str, int, int], None]


def select_coreset(model: nn.Module, objective: Any, selector: Selector, data: Any, *, seed: int, epoch: int,
                   device: torch.device, amp_dtype: torch.dtype | None = None,
                   ctx: DistContext | None = None, progress: SelectionProgress | None = None,
                   attack_model: nn.Module | None = None) -> tuple[Coreset, SelectionTiming]:
    """Build the adversarial points and gradient features of the whole training set and solve.

    The solver's randomness (batch partition, random fill) comes from ``(seed, epoch)`` so a
    selection is reproducible and a resumed run re-selects exactly as the original would. Data
    parallel: each rank attacks and scores its contiguous shard, the features are gathered in
    order, rank 0 solves and broadcasts the coreset, so every rank trains on the same subset.

    ``selector`` is the built :class:`Selector` (``advtrain.build``). ``progress`` reports the pass
    (:data:`SelectionProgress`); every rank calls it at the solver stage, after the gather.
    ``attack_model``: what the attack runs on instead of ``model`` (``train.fold_bn``).
    """
    report = progress or (lambda stage, done, total: None)
    ctx = ctx or DistContext()
    start = time.perf_counter()
    if not selector.needs_features:  # a random subset needs no adversarial points: no attack pass
        labels = data.train.labels.cpu()
        feats, timing = torch.zeros(len(labels), 0, device=device), SelectionTiming()
    else:
        feats, labels, timing = gradient_features(
            model, objective, data.train, batch_size=data.batch_size, device=device, amp_dtype=amp_dtype,
            bias_only=selector.bias_only,
            indices=distributed.shard_range(ctx, len(data.train)) if ctx.enabled else None,
            progress=lambda done, total: report("attack", done, total), attack_model=attack_model)
        feats, labels = distributed.gather_rows(ctx, feats), distributed.gather_rows(ctx, labels)
    report("solver", 0, 1)
    solve_start = time.perf_counter()
    indices = weights = None
    if ctx.is_main:
        result = selector(feats, labels, generator=generator(derive_seed(seed, "select", epoch)),
                          batch_size=data.batch_size)
        indices, weights = result.indices, result.weights.float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    solver_s = time.perf_counter() - solve_start
    indices = distributed.broadcast_tensor(ctx, indices, dtype=torch.int64, device=device)
    weights = distributed.broadcast_tensor(ctx, weights, dtype=torch.float32, device=device)
    indices = indices.cpu()
    report("solver", 1, 1)
    timing.solver_s, timing.total_s = solver_s, time.perf_counter() - start
    return Coreset(indices, weights.cpu(), epoch, labels.cpu()[indices]), timing
