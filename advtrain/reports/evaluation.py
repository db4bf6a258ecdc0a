"""The evaluation report: RobustBench-style JSON, a Markdown summary and the ε-sweep plot.

JSON is the machine-readable record (eps kept both as written, e.g. ``"8/255"``, and as a float);
Markdown is what a person pastes into a paper draft; the plot is the robust-accuracy-vs-ε curve
(paper Fig. 2).
"""

from __future__ import annotations

import base64
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advtrain.attacks.autoattack import GRADIENT_STAGES
from advtrain.attacks.eval_attack import EvalAttack
from advtrain.attacks.families import STEP_RULE
from advtrain.attacks.threat import SYMBOL, Threat, report_name
from advtrain.eval.robust import AttackResult, EvalResult
from advtrain.io.files import write_atomically
from advtrain.params import format_number

#: How ``robust_bits`` are written: one bit per evaluated example, in the order of ``indices``.
BITS_ENCODING = "base64 of numpy.packbits(bits, bitorder='little'); bit i is example indices[i]"


def pack_bits(bits: Tensor) -> str:
    """A boolean vector as base64 text (8 examples per byte)."""
    packed = np.packbits(bits.cpu().numpy().astype(bool), bitorder="little")
    return base64.b64encode(packed.tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> Tensor:
    """The inverse of :func:`pack_bits` for ``n`` examples."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    return torch.from_numpy(np.unpackbits(raw, count=n, bitorder="little").astype(bool))


def index_ranges(indices: Tensor) -> list[list[int]]:
    """``[[start, stop), ...]`` runs of consecutive indices (the first N examples: one run)."""
    runs: list[list[int]] = []
    for i in indices.tolist():
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def expand_ranges(runs: list[list[int]]) -> list[int]:
    """The inverse of :func:`index_ranges`."""
    return [i for start, stop in runs for i in range(start, stop)]


def per_example(row: dict) -> dict[int, bool]:
    """``{example index: robust}`` of one attack row of a ``report.json`` (clean: correct)."""
    indices = expand_ranges(row["indices"])
    bits = unpack_bits(row["robust_bits"], len(indices))
    return dict(zip(indices, bits.tolist(), strict=True))


#: The files of one evaluation, in the folder :class:`EvaluationReport` is written to.
REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
PLOT_FILE = "robust_vs_eps.png"


@dataclass
class AttackRow:
    """One attack of an evaluation: what ran (ball, budget) and what it measured, per example too."""

    name: str
    description: str
    family: str
    norm: str
    eps: str
    eps_float: float
    eps_source: str | None
    at_training_eps: bool | None
    alpha: float | None
    step_rule: str | None
    steps: int | None
    restarts: int | None
    standard: bool
    lpips_network: str | None
    group: str | None
    robust_acc: float
    per_class_acc: list[float]
    seconds: float
    indices: list[list[int]]
    robust_bits: str
    queries: int | None = None
    stage_acc: dict[str, float] | None = None
    stage_robust_bits: dict[str, str] | None = None

    @classmethod
    def measured(cls, attack: EvalAttack, result: AttackResult, runs: list[list[int]],
                 trained: Threat | None) -> AttackRow:
        threat = attack.threat()
        row = cls(result.name, result.description, attack.family, threat.metric, threat.written(), threat.bound,
                  attack.eps_source, None if trained is None else threat.same_ball(trained), attack.alpha,
                  STEP_RULE if attack.alpha_from_rule else None, attack.steps, attack.restarts, attack.standard,
                  attack.network, attack.group, result.robust_acc, result.per_class, result.seconds, runs,
                  pack_bits(result.correct), attack.queries)
        if result.stage_correct:
            row.stage_acc = result.stage_acc
            row.stage_robust_bits = {name: pack_bits(c) for name, c in result.stage_correct.items()}
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> AttackRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.queries is None:
            del out["queries"]
        if self.stage_acc is None:
            del out["stage_acc"], out["stage_robust_bits"]
        return out


@dataclass
class EvaluationRecord:
    """What one evaluation measured: clean accuracy (its own step), then each attack.

    The per-attack part of ``advtrain eval``'s ``report.json`` and the ``test`` entry of a run's
    ``report.json``; ``to_json`` keeps the keys those files have always had.
    """

    n_examples: int
    clean_acc: float
    per_class_clean_acc: list[float]
    union_acc: float | None
    union_acc_by_group: dict[str, float]
    attacks: list[AttackRow]
    clean_indices: list[list[int]]
    clean_bits: str
    time_s: float
    precision: str = "fp32"

    @property
    def robust_acc(self) -> dict[str, float]:
        return {row.name: row.robust_acc for row in self.attacks}

    def to_json(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples, "clean_acc": self.clean_acc, "per_class_clean_acc": self.per_class_clean_acc,
            "robust_acc": self.robust_acc, "union_acc": self.union_acc, "union_acc_by_group": self.union_acc_by_group,
            "attacks": [row.to_json() for row in self.attacks], "clean_indices": self.clean_indices,
            "clean_bits": self.clean_bits, "robust_bits_encoding": BITS_ENCODING, "time_s": self.time_s,
            "precision": self.precision,
        }


def build_record(result: EvalResult, attacks: list[EvalAttack], *, trained: Threat | None = None) -> EvaluationRecord:
    """The record of ``result`` (``trained``: the checkpoint's training ball, if known)."""
    runs = index_ranges(result.indices)
    rows = [AttackRow.measured(attack, res, runs, trained) for res, attack in zip(result.attacks, attacks, strict=True)]
    return EvaluationRecord(result.n_examples, result.clean_acc, result.per_class_clean, result.union_acc,
                            result.group_union_acc, rows, runs, pack_bits(result.clean_correct), result.seconds)


def eval_record(result: EvalResult, attacks: list[EvalAttack], *, trained: Threat | None = None) -> dict:
    """:func:`build_record` as the JSON a report holds."""
    return build_record(result, attacks, trained=trained).to_json()


def threat_model(attacks: list[EvalAttack]) -> str:
    """``Linf``, ``L2+LPIPS+Linf``, ...: the metrics of the attacks; ``none`` without attacks."""
    return report_name({a.threat().metric for a in attacks})


@dataclass
class SweepPoint:
    """Robust accuracy at one ε of the sweep (ε = 0: clean accuracy)."""

    eps: str
    eps_float: float
    attack: str
    norm: str
    robust_acc: float


@dataclass
class EvaluationReport:
    """What ``advtrain eval`` writes as :data:`REPORT_FILE` (and renders as :data:`MARKDOWN_FILE`).

    Which model (``checkpoint``, its ``epoch`` and kind; a model from elsewhere names its own
    source there), which data, the balls (the first ℓp attack's ε; the training ball when known),
    the :class:`EvaluationRecord`, the ε sweep, and honest warnings about the attacks' strength.
    """

    model: str
    checkpoint: str
    checkpoint_kind: str | None
    epoch: int | None
    dataset: str
    split: str
    threat_model: str
    training_threat_model: str | None
    eps: str | None
    eps_float: float | None
    eps_source: str | None
    record: EvaluationRecord
    eps_sweep: list[SweepPoint]
    total_time_s: float
    device: str
    seed: int
    advtrain_version: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        head = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("record", "eps_sweep", "total_time_s", "device", "seed", "advtrain_version",
                                  "warnings")}
        return {**head, **self.record.to_json(), "eps_sweep": [dataclasses.asdict(p) for p in self.eps_sweep],
                "total_time_s": self.total_time_s, "device": self.device, "seed": self.seed,
                "advtrain_version": self.advtrain_version, "warnings": self.warnings}


#: AutoAttack below a PGD by more than this is worth explaining (points of accuracy, as a fraction).
AA_GAP = 0.03
_STAGE_LABEL = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


def _found_beyond(row: AttackRow, other_bits: Tensor, n: int) -> int:
    """Examples the gradient stages of AutoAttack ``row`` left robust that ``other_bits`` marks fooled."""
    survived = unpack_bits((row.stage_robust_bits or {})[GRADIENT_STAGES[-1]], n)
    return int((survived & ~other_bits).sum())


def _notable(count: int, n: int) -> bool:
    """More than half a point, and at least one example."""
    return count >= 1 and count > 0.005 * n


def _reduced_budget_warning(aa: AttackRow, same_ball: list[AttackRow], n: int) -> str | None:
    weaker = [(o.name, _found_beyond(aa, unpack_bits(o.robust_bits, n), n)) for o in same_ball]
    weaker = [(name, k) for name, k in weaker if _notable(k, n)]
    if not weaker:
        return None
    return (f"{aa.name} is a non-standard, reduced AutoAttack budget and "
            + ", ".join(f"{name} fooled {k} examples it left robust" for name, k in weaker)
            + ": too small a budget to trust; run the standard aa for a number to report.")


def _masking_evidence(aa: AttackRow, same_ball: list[AttackRow], n: int) -> list[str]:
    stages = aa.stage_acc or {}
    evidence = []
    square = stages.get(GRADIENT_STAGES[-1], 0.0) - stages.get("square", 0.0)
    if _notable(round(square * n), n):
        evidence.append(f"Square (gradient-free) fooled {square:.1%} of the examples that APGD-CE, APGD-T and "
                        f"FAB-T left robust")
    for other in same_ball:
        extra = _found_beyond(aa, unpack_bits(other.robust_bits, n), n)
        if _notable(extra, n):
            alpha = None if other.alpha is None else format_number(other.alpha)
            evidence.append(f"{other.name} (α={alpha}) fooled {extra} examples "
                            f"({extra / n:.1%}) that APGD-CE, APGD-T and FAB-T left robust")
    return evidence


def _weaker_pgd_warnings(aa: AttackRow, same_ball: list[AttackRow], nonstandard: str) -> list[str]:
    stages = aa.stage_acc or {}
    warnings = []
    for pgd in same_ball:
        gap = pgd.robust_acc - aa.robust_acc
        if pgd.family == "fgsm" or gap <= AA_GAP + 1e-6:  # "more than 3 points", not float32 noise
            continue
        path = ", ".join(f"{_STAGE_LABEL[k]} {v:.1%}" for k, v in stages.items())
        ce_gap = pgd.robust_acc - stages.get("apgd-ce", aa.robust_acc)
        t_gap = stages.get("apgd-ce", aa.robust_acc) - stages.get("apgd-t", aa.robust_acc)
        warnings.append(
            f"{aa.name}{nonstandard} is {gap:.1%} below {pgd.name} ({aa.robust_acc:.1%} vs "
            f"{pgd.robust_acc:.1%}; after each stage: {path}). APGD-CE (same loss, adaptive step) accounts "
            f"for {ce_gap:.1%}, APGD-T (targeted loss) for {t_gap:.1%}, and Square finds nothing beyond the "
            f"gradient stages: {pgd.name} is weaker than APGD, not a sign of gradient masking. Report the "
            f"AutoAttack number.")
    return warnings


def masking_warnings(record: EvaluationRecord) -> list[str]:
    """Honest warnings about the attacks' strength, from per-stage and per-example results.

    Gradient masking is claimed only on evidence: Square (gradient-free) fools points that
    APGD-CE, APGD-T and FAB-T left robust, or a PGD/CW in the same ball fools points those
    gradient stages missed. AutoAttack far below a PGD without such evidence means that PGD is
    weaker than APGD (its step, its loss): said as such, with the stage that made the difference.
    """
    n, rows = record.n_examples, record.attacks
    warnings = []
    for aa in (r for r in rows if r.family == "aa" and r.stage_acc):
        nonstandard = "" if aa.standard else " (non-standard AutoAttack budget)"
        same_ball = [r for r in rows if r.family in ("pgd", "cw", "fgsm") and r.norm == aa.norm
                     and math.isclose(r.eps_float, aa.eps_float, rel_tol=1e-6)]
        reduced = None if aa.standard else _reduced_budget_warning(aa, same_ball, n)
        if reduced:
            warnings.append(reduced)
            continue
        evidence = _masking_evidence(aa, same_ball, n)
        if evidence:
            warnings.append(f"{aa.name}{nonstandard}: " + "; ".join(evidence) + ": a sign of gradient "
                            "masking (the gradient attacks miss what others find). Treat every number here as an "
                            "upper bound; try more restarts, larger steps and gradient-free attacks.")
            continue
        warnings += _weaker_pgd_warnings(aa, same_ball, nonstandard)
    acc = record.robust_acc
    pgd50 = next((r for r in rows if r.name.startswith("pgd50")), None)
    if "fgsm" in acc and pgd50 is not None and acc["fgsm"] < pgd50.robust_acc - 0.01:
        warnings.append(f"FGSM ({acc['fgsm']:.1%}) is stronger than {pgd50.name} ({pgd50.robust_acc:.1%}): "
                        "the PGD steps are not working, a sign of gradient masking.")
    return warnings


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _ball(row: AttackRow) -> str:
    where = {True: ", the training ε", False: ", NOT the training ε"}.get(row.at_training_eps, "")
    return f"{SYMBOL.get(row.norm, row.norm)} ε={row.eps} ({row.eps_source or 'preset default'}{where})"


def eval_markdown(report: EvaluationReport) -> str:
    """A Markdown page for an ``advtrain eval`` report: percentages, one decimal; no raw values."""
    record = report.record
    lines = [
        f"# Robustness report: {report.model} on {report.dataset} ({report.split})",
        "",
        f"- checkpoint: `{report.checkpoint}` (epoch {report.epoch}, {report.checkpoint_kind})",
        f"- trained against: {report.training_threat_model or 'no ℓp or LPIPS ball (clean training, or not recorded)'}",
        f"- threat model: {report.threat_model}; n_examples: {record.n_examples} (the first of the split); "
        f"evaluation in fp32, model in eval mode",
        f"- PGD/CW step when not given: {STEP_RULE}",
        f"- advtrain {report.advtrain_version}",
        "",
        "| attack | ball (ε from) | description | accuracy | time (s) |",
        "|---|---|---|---|---|",
        f"| clean | none | no attack | {percent(record.clean_acc)} | |",
    ]
    lines += [f"| {row.name} | {_ball(row)} | {row.description} | {percent(row.robust_acc)} | {row.seconds:.1f} |"
              for row in record.attacks]
    if record.union_acc is not None:
        lines.append(f"| union | | correct under every attack | {percent(record.union_acc)} | |")
    for group, acc in record.union_acc_by_group.items():
        lines.append(f"| union of {group} | | correct under every {group} attack | {percent(acc)} | |")
    staged = [row for row in record.attacks if row.stage_acc]
    if staged:
        lines += ["", "## AutoAttack, accuracy after each stage", "",
                  "Each stage attacks only the examples still robust after the previous ones.", "",
                  "| attack | " + " | ".join(_STAGE_LABEL.values()) + " |",
                  "|---|" + "---|" * len(_STAGE_LABEL)]
        for row in staged:
            cells = " | ".join(percent((row.stage_acc or {}).get(k)) for k in _STAGE_LABEL)
            lines.append(f"| {row.name}{'' if row.standard else ' (non-standard)'} | {cells} |")
    if report.eps_sweep:
        lines += ["", "## Robust accuracy vs ε", "", "| ε | attack | accuracy |", "|---|---|---|"]
        lines += [f"| {point.eps} | {point.attack} | {percent(point.robust_acc)} |" for point in report.eps_sweep]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    lines += ["", "Per-example results (indices and packed robust bits per attack) are in report.json."]
    return "\n".join(lines) + "\n"


def plot_eps_sweep(path: Path, sweep: list[SweepPoint]) -> None:
    """Robust accuracy against attack strength (paper Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [point.eps_float * (255 if point.norm == "linf" else 1) for point in sweep]
    ys = [100 * point.robust_acc for point in sweep]
    # Markers only: accuracy was measured at these ε and nowhere between them.
    ax.plot(xs, ys, linestyle="none", marker="o")
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(xs)
    ax.margins(x=0.1, y=0.15)
    norm = sweep[0].norm if sweep else "linf"
    ax.set_xlabel("ε × 255 (ℓ∞), measured points only" if norm == "linf" else "ε (ℓ2), measured points only")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{sweep[0].attack if sweep else ''} robust accuracy vs ε")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
