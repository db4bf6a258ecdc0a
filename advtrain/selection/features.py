"""Adversarial gradient features over the whole training set (paper Sec. 3.2, Danskin).

One sequential pass over the training set, without augmentation, so row ``i`` of the features is
training sample ``i`` and the point the attack built for it (the reference code scores rows from a
shuffled loader and maps them back as if ordered; we never reorder). The model is in eval mode
for the whole pass: the attack must not see batch statistics of other samples, and BatchNorm
running statistics must not move.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.coreset import SelectionTiming
from advtrain.runtime.device import autocast
from advtrain.runtime.modes import eval_mode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gradient_features(
    model: nn.Module,
    objective: Any,
    source: Any,
    *,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    bias_only: bool = False,
    indices: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    attack_model: nn.Module | None = None,
) -> tuple[Tensor, Tensor, SelectionTiming]:
    """Per-sample last-layer gradients at the objective's adversarial points.

    Returns ``(features (n, D) on device, labels (n,), timing)`` with rows in the order of
    ``indices`` (default: every sample of ``source``). ``progress(done, total)`` is called after
    each batch; it may raise to stop the pass between batches (a stop request). ``attack_model``:
    what the attack runs on instead of ``model`` (an eval-mode view of it, ``train.fold_bn``).
    """
    from advtrain.data import iterate_batches

    indices = torch.arange(len(source)) if indices is None else indices
    timing = SelectionTiming()
    rows: list[Tensor] = []
    labels: list[Tensor] = []
    total = math.ceil(len(indices) / batch_size)
    with eval_mode(model):
        batches = iterate_batches(source, indices, batch_size, shuffle=False, generator=None, augment="none",
                                  device=device)
        for done, (x, y, _) in enumerate(batches, 1):
            t0 = time.perf_counter()
            with autocast(device, amp_dtype):
                points = objective.selection_points(model if attack_model is None else attack_model, x, y)
            _sync(device)
            t1 = time.perf_counter()
            with autocast(device, amp_dtype):
                feats = objective.selection_features(model, x, y, points, bias_only=bias_only)
            rows.append(feats.float())
            labels.append(y)
            _sync(device)
            timing.attack_s += t1 - t0
            timing.features_s += time.perf_counter() - t1
            if progress is not None:
                progress(done, total)
    return torch.cat(rows), torch.cat(labels), timing
