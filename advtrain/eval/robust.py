"""Clean and robust accuracy on a held-out split, per attack, per class and in union.

Evaluation is always fp32 with the model in eval mode: reported numbers must not depend on the
training precision. An example counts as robust to an attack only if it is classified correctly
both clean and at the attack's point (the AutoAttack/RobustBench convention), and as robust "in
union" only if it survives every attack. Attacks that came from a named group (``unseen``) also
get the union over that group alone: PAT's "union of unseen threat models" accuracy.

The clean pass comes first; then each attack runs over the split. AutoAttack runs stage by stage
over the whole split, each stage only on the points still robust (clean-correct and unfooled by
the earlier stages), as the original implementation does; the accuracy after each stage and its
per-example bits are kept, so a report can tell which stage found what.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.eval_attack import EvalAttack
from advtrain.runtime.modes import eval_mode


@dataclass
class AttackResult:
    """Accuracy under one attack."""

    name: str
    description: str
    robust_acc: float
    per_class: list[float]
    seconds: float
    correct: Tensor = field(repr=False)
    #: AutoAttack only: per stage (in order), the examples still robust after it (cumulative).
    stage_correct: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def stage_acc(self) -> dict[str, float]:
        """Accuracy after each AutoAttack stage (cumulative: the last one is ``robust_acc``)."""
        return {name: float(c.float().mean()) if len(c) else 0.0 for name, c in self.stage_correct.items()}


@dataclass
class EvalResult:
    """Everything one evaluation measured."""

    n_examples: int
    clean_acc: float
    per_class_clean: list[float]
    attacks: list[AttackResult]
    union_acc: float | None
    seconds: float
    group_union_acc: dict[str, float] = field(default_factory=dict)
    #: The indices (into the evaluated split) of the examples, in the order of every ``correct``.
    indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), repr=False)
    #: Per example (in the order of ``indices``): classified correctly without attack.
    clean_correct: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool), repr=False)

    def summary(self) -> dict[str, float]:
        """``{"clean": acc, "<attack>": acc, ...}`` for metrics and progress lines."""
        return {"clean": self.clean_acc, **{a.name: a.robust_acc for a in self.attacks}}

    @property
    def headline(self) -> float:
        """The first attack's accuracy (clean accuracy without attacks): what "best" is chosen by."""
        return self.attacks[0].robust_acc if self.attacks else self.clean_acc


def _per_class(correct: Tensor, labels: Tensor, num_classes: int) -> list[float]:
    out = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float(correct[mask].float().mean()) if mask.any() else float("nan"))
    return out


#: ``progress(label, done, total)``: called as work advances (``advtrain eval`` draws rich bars with it).
Progress = Callable[[str, int, int], None]


def _no_progress(label: str, done: int, total: int) -> None:
    return None


def evaluate(
    model: nn.Module,
    source: Any,
    attacks: list[EvalAttack],
    *,
    n_examples: int,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the first ``n_examples`` of ``source``: clean accuracy, then each attack."""
    from advtrain.data import iterate_batches

    report = progress or _no_progress
    start = time.perf_counter()
    n = min(n_examples, len(source))
    indices = torch.arange(n)
    labels = source.labels[:n].clone()
    clean_correct = torch.zeros(n, dtype=torch.bool)
    adv_correct = {a.name: torch.zeros(n, dtype=torch.bool) for a in attacks}
    stage_correct: dict[str, dict[str, Tensor]] = {}
    seconds = {a.name: 0.0 for a in attacks}

    def batches(rows: Tensor) -> Any:
        return iterate_batches(source, rows, batch_size, shuffle=False, generator=None, augment="none",
                               device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with eval_mode(model):
        offset = 0
        for x, y, _ in batches(indices):
            with torch.no_grad():
                clean_correct[offset:offset + len(y)] = (model(x).argmax(1) == y).cpu()
            offset += len(y)
        for attack in attacks:
            t0 = time.perf_counter()
            if attack.stages():
                stage_correct[attack.name] = _run_stages(model, attack, clean_correct, batches, report)
                adv_correct[attack.name] = next(reversed(stage_correct[attack.name].values())).clone()
            else:
                offset = 0
                for x, y, _ in batches(indices):
                    rows = slice(offset, offset + len(y))
                    offset += len(y)
                    x_adv = attack.run(model, x, y)
                    with torch.no_grad():
                        adv_correct[attack.name][rows] = (model(x_adv).argmax(1) == y).cpu()
                    report(attack.name, offset, n)
            sync()
            seconds[attack.name] += time.perf_counter() - t0
    results = []
    for attack in attacks:
        correct = clean_correct & adv_correct[attack.name]
        results.append(AttackResult(attack.name, attack.describe(), float(correct.float().mean()) if n else 0.0,
                                    _per_class(correct, labels, num_classes), seconds[attack.name], correct,
                                    stage_correct.get(attack.name, {})))
    union = _union_acc(clean_correct, [r.correct for r in results]) if results else None
    groups: dict[str, list[Tensor]] = {}
    for attack, res in zip(attacks, results, strict=True):
        if attack.group:
            groups.setdefault(attack.group, []).append(res.correct)
    return EvalResult(n, float(clean_correct.float().mean()) if n else 0.0,
                      _per_class(clean_correct, labels, num_classes), results, union,
                      time.perf_counter() - start,
                      {name: _union_acc(clean_correct, members) for name, members in groups.items()},
                      indices, clean_correct)


def _run_stages(model: nn.Module, attack: EvalAttack, clean_correct: Tensor, batches: Callable[[Tensor], Any],
                report: Progress) -> dict[str, Tensor]:
    """Each stage over the examples still robust; per stage, the robust examples after it."""
    robust = clean_correct.clone()
    after: dict[str, Tensor] = {}
    for stage in attack.stages():
        rows = robust.nonzero().flatten()
        label = f"{attack.name} · {stage} ({len(rows)} robust)"
        report(label, 0, len(rows))
        done = 0
        for x, y, _ in batches(rows):
            chunk = rows[done:done + len(y)]
            done += len(y)
            x_adv = attack.run_stage(model, x, y, stage)
            with torch.no_grad():
                robust[chunk] = (model(x_adv).argmax(1) == y).cpu()
            report(label, done, len(rows))
        after[stage] = robust.clone()
    return after


def _union_acc(clean_correct: Tensor, robust: list[Tensor]) -> float:
    """Share of examples correct clean and under every attack in ``robust``."""
    all_ok = clean_correct.clone()
    for correct in robust:
        all_ok &= correct
    return float(all_ok.float().mean()) if len(all_ok) else 0.0
