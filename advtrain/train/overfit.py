"""The catastrophic-overfitting guard (Wong et al. 2020, ``train.overfit_guard``).

Single-step training (FGSM with a large step) can suddenly lose all robustness to multi-step
attacks within one epoch while its training loss still looks fine. After each trained epoch the
guard attacks one fixed training batch with PGD-5 at the training ε; when that accuracy falls more
than ``train.overfit_drop`` below its best so far, training stops and keeps the previous epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.attacks.presets import EvalAttack, resolve_eval_attack
from advtrain.attacks.threat import HasThreat
from advtrain.eval.robust import evaluate


@dataclass(frozen=True)
class ProbeResult:
    """One epoch's probe: its accuracy, the best so far (this one included), and whether it collapsed."""

    accuracy: float
    best: float
    collapsed: bool


def collapsed(best: float | None, accuracy: float, drop: float) -> bool:
    """Did the probe accuracy fall more than ``drop`` below the best of the earlier epochs?"""
    return best is not None and best - accuracy > drop


def probe_attack(attack_params: HasThreat | None) -> EvalAttack:
    """PGD-5 in the training attack's ball when it is ℓ∞ or ℓ2 (else the ℓ∞ preset ball)."""
    threat = attack_params.threat() if attack_params is not None else None
    if threat is None or not threat.is_lp:
        return resolve_eval_attack("pgd5")
    return resolve_eval_attack("pgd5" if threat.norm == "linf" else "pgd5-l2", eps=threat.bound)


def check_overfit(model: nn.Module, source: Any, attack_params: HasThreat | None, *, batch_size: int, num_classes: int,
                  device: torch.device, best: float | None, drop: float) -> ProbeResult:
    """PGD-5 accuracy on the first ``batch_size`` training samples, against ``best`` of the earlier epochs.

    Args:
        model: The model just trained.
        source: The training split (its first batch is the fixed probe batch).
        attack_params: The training attack's parameters (None for clean training).
        batch_size: Probe batch size (the training batch size).
        num_classes: Classes of the data.
        device: Where to run the probe.
        best: The best probe accuracy of the earlier epochs (None at the first probe).
        drop: The largest fall below ``best`` that is not a collapse.
    """
    n = min(len(source), batch_size)
    result = evaluate(model, source, [probe_attack(attack_params)], n_examples=n, batch_size=n, device=device,
                      num_classes=num_classes)
    accuracy = result.attacks[0].robust_acc
    return ProbeResult(accuracy, accuracy if best is None else max(best, accuracy), collapsed(best, accuracy, drop))


def collapse_message(epoch: int, best: float, accuracy: float, last: Path) -> str:
    """What the run says when the guard stops it at (0-based) ``epoch``; ``last`` is the kept checkpoint."""
    kept = f"the model of epoch {epoch} ({last}) is kept" if last.exists() else "no earlier checkpoint exists"
    return (f"catastrophic overfitting at epoch {epoch + 1}: PGD-5 accuracy on a fixed training batch "
            f"fell from {best:.1%} to {accuracy:.1%}. Training stopped; {kept}. "
            f"Lower attack.alpha (e.g. 1.0·ε) or ε, or use PGD training.")
