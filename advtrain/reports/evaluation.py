"""The evaluation report: RobustBench-style JSON, a Markdown summary and the ε-sweep plot.

JSON is the machine-readable record (eps kept both as written, e.g. ``"8/255"``, and as a float);
Markdown is what a person pastes into a paper draft; the plot is the robust-accuracy-vs-ε curve
(paper Fig. 2).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advtrain.attacks.autoattack import GRADIENT_STAGES
from advtrain.attacks.presets import STEP_RULE
from advtrain.eval.robust import EvalResult
from advtrain.io.checkpoint import write_atomically
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


def eval_record(result: EvalResult, attacks: list[Any], *, trained: Any = None) -> dict:
    """The per-attack part of a report (``trained``: the checkpoint's training ball, if known)."""
    runs = index_ranges(result.indices)
    rows = []
    for res, attack in zip(result.attacks, attacks, strict=True):
        clean = attack.family == "clean"
        row = {
            "name": res.name, "description": res.description, "family": attack.family,
            "norm": attack.norm, "eps": None if clean else attack.eps_text or format_number(attack.eps),
            "eps_float": None if clean else attack.eps, "eps_source": attack.eps_source,
            "at_training_eps": None if clean else _at_training(attack, trained),
            "alpha": attack.alpha, "step_rule": STEP_RULE if attack.alpha_from_rule else None,
            "steps": attack.steps, "restarts": attack.restarts, "standard": attack.standard,
            "lpips_network": getattr(attack, "network", None), "group": getattr(attack, "group", None),
            "robust_acc": res.robust_acc, "per_class_acc": res.per_class, "seconds": res.seconds,
            "indices": runs, "robust_bits": pack_bits(res.correct),
        }
        if res.stage_correct:
            row["stage_acc"] = res.stage_acc
            row["stage_robust_bits"] = {name: pack_bits(c) for name, c in res.stage_correct.items()}
        rows.append(row)
    return {
        "n_examples": result.n_examples,
        "clean_acc": result.clean_acc,
        "per_class_clean_acc": result.per_class_clean,
        "robust_acc": {r["name"]: r["robust_acc"] for r in rows if r["name"] != "clean"},
        "union_acc": result.union_acc,
        "union_acc_by_group": result.group_union_acc,
        "attacks": rows,
        "clean_indices": runs,
        "clean_bits": pack_bits(result.clean_correct),
        "robust_bits_encoding": BITS_ENCODING,
        "time_s": result.seconds,
        "precision": "fp32",
    }


def _at_training(attack: Any, trained: Any) -> bool | None:
    """Whether the attack's ball is the checkpoint's training ball (None: no training ball known)."""
    if trained is None:
        return None
    same_metric = attack.norm == trained.norm
    return bool(same_metric and math.isclose(attack.eps, trained.eps, rel_tol=1e-6, abs_tol=1e-9))


def threat_model(attacks: list[Any]) -> str:
    norms = sorted({a.norm for a in attacks if a.family != "clean" and a.norm})
    names = {"linf": "Linf", "l2": "L2", "lpips": "LPIPS", "flow": "StAdv", "color": "ReColorAdv"}
    return "+".join(sorted(names.get(n, n) for n in norms)) or "none"


#: AutoAttack below a PGD by more than this is worth explaining (points of accuracy, as a fraction).
AA_GAP = 0.03
_STAGE_LABEL = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


def _found_beyond(row: dict, other_bits: Tensor, n: int) -> int:
    """Examples the gradient stages of AutoAttack ``row`` left robust that ``other_bits`` marks fooled."""
    survived = unpack_bits(row["stage_robust_bits"][GRADIENT_STAGES[-1]], n)
    return int((survived & ~other_bits).sum())


def _notable(count: int, n: int) -> bool:
    """More than half a point, and at least one example."""
    return count >= 1 and count > 0.005 * n


def masking_warnings(record: dict) -> list[str]:
    """Honest warnings about the attacks' strength, from per-stage and per-example results.

    Gradient masking is claimed only on evidence: Square (gradient-free) fools points that
    APGD-CE, APGD-T and FAB-T left robust, or a PGD/CW in the same ball fools points those
    gradient stages missed. AutoAttack far below a PGD without such evidence means that PGD is
    weaker than APGD (its step, its loss): said as such, with the stage that made the difference.
    """
    n = record["n_examples"]
    rows = [r for r in record["attacks"] if r["family"] not in ("clean",)]
    warnings = []
    for aa in (r for r in rows if r["family"] == "aa" and r.get("stage_acc")):
        stages = aa["stage_acc"]
        nonstandard = "" if aa.get("standard", True) else " (non-standard AutoAttack budget)"
        evidence = []
        square = stages.get(GRADIENT_STAGES[-1], 0.0) - stages.get("square", 0.0)
        same_ball = [r for r in rows if r["family"] in ("pgd", "cw", "fgsm") and r["norm"] == aa["norm"]
                     and math.isclose(r["eps_float"], aa["eps_float"], rel_tol=1e-6)]
        if not aa.get("standard", True):
            weaker = [(o["name"], _found_beyond(aa, unpack_bits(o["robust_bits"], n), n)) for o in same_ball]
            weaker = [(name, k) for name, k in weaker if _notable(k, n)]
            if weaker:
                warnings.append(f"{aa['name']} is a non-standard, reduced AutoAttack budget and "
                                + ", ".join(f"{name} fooled {k} examples it left robust" for name, k in weaker)
                                + ": too small a budget to trust; run the standard aa for a number to report.")
                continue
        if _notable(round(square * n), n):
            evidence.append(f"Square (gradient-free) fooled {square:.1%} of the examples that APGD-CE, APGD-T and "
                            f"FAB-T left robust")
        for other in same_ball:
            extra = _found_beyond(aa, unpack_bits(other["robust_bits"], n), n)
            if _notable(extra, n):
                alpha = None if other.get("alpha") is None else format_number(other["alpha"])
                evidence.append(f"{other['name']} (α={alpha}) fooled {extra} examples "
                                f"({extra / n:.1%}) that APGD-CE, APGD-T and FAB-T left robust")
        if evidence:
            warnings.append(f"{aa['name']}{nonstandard}: " + "; ".join(evidence) + ": a sign of gradient "
                            "masking (the gradient attacks miss what others find). Treat every number here as an "
                            "upper bound; try more restarts, larger steps and gradient-free attacks.")
            continue
        for pgd in same_ball:
            gap = pgd["robust_acc"] - aa["robust_acc"]
            if pgd["family"] == "fgsm" or gap <= AA_GAP + 1e-6:  # "more than 3 points", not float32 noise
                continue
            path = ", ".join(f"{_STAGE_LABEL[k]} {v:.1%}" for k, v in stages.items())
            ce_gap = pgd["robust_acc"] - stages.get("apgd-ce", aa["robust_acc"])
            t_gap = stages.get("apgd-ce", aa["robust_acc"]) - stages.get("apgd-t", aa["robust_acc"])
            warnings.append(
                f"{aa['name']}{nonstandard} is {gap:.1%} below {pgd['name']} ({aa['robust_acc']:.1%} vs "
                f"{pgd['robust_acc']:.1%}; after each stage: {path}). APGD-CE (same loss, adaptive step) accounts "
                f"for {ce_gap:.1%}, APGD-T (targeted loss) for {t_gap:.1%}, and Square finds nothing beyond the "
                f"gradient stages: {pgd['name']} is weaker than APGD, not a sign of gradient masking. Report the "
                f"AutoAttack number.")
    acc = record["robust_acc"]
    pgd50 = next((r for r in rows if r["name"].startswith("pgd50")), None)
    if "fgsm" in acc and pgd50 is not None and acc["fgsm"] < pgd50["robust_acc"] - 0.01:
        warnings.append(f"FGSM ({acc['fgsm']:.1%}) is stronger than {pgd50['name']} ({pgd50['robust_acc']:.1%}): "
                        "the PGD steps are not working, a sign of gradient masking.")
    return warnings


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _ball(row: dict) -> str:
    if row["family"] == "clean":
        return "none"
    symbol = {"linf": "ℓ∞", "l2": "ℓ2", "lpips": "LPIPS", "flow": "flow", "color": "colour"}.get(row["norm"] or "", "")
    where = {True: ", the training ε", False: ", NOT the training ε"}.get(row.get("at_training_eps"), "")
    return f"{symbol} ε={row['eps']} ({row.get('eps_source') or 'preset default'}{where})"


def eval_markdown(report: dict) -> str:
    """A Markdown page for an ``advtrain eval`` report: percentages, one decimal; no raw values."""
    trained = report.get("training_threat_model")
    lines = [
        f"# Robustness report: {report['model']} on {report['dataset']} ({report['split']})",
        "",
        f"- checkpoint: `{report['checkpoint']}` (epoch {report.get('epoch')}, {report.get('checkpoint_kind')})",
        f"- trained against: {trained or 'no ℓp or LPIPS ball (clean training, or not recorded)'}",
        f"- threat model: {report['threat_model']}; n_examples: {report['n_examples']} (the first of the split); "
        f"evaluation in fp32, model in eval mode",
        f"- PGD/CW step when not given: {STEP_RULE}",
        f"- advtrain {report['advtrain_version']}",
        "",
        "| attack | ball (ε from) | description | accuracy | time (s) |",
        "|---|---|---|---|---|",
        f"| clean | none | no attack | {percent(report['clean_acc'])} | |",
    ]
    for row in report["attacks"]:
        if row["name"] == "clean":
            continue
        lines.append(f"| {row['name']} | {_ball(row)} | {row['description']} | {percent(row['robust_acc'])} | "
                     f"{row['seconds']:.1f} |")
    if report.get("union_acc") is not None:
        lines.append(f"| union | | correct under every attack | {percent(report['union_acc'])} | |")
    for group, acc in (report.get("union_acc_by_group") or {}).items():
        lines.append(f"| union of {group} | | correct under every {group} attack | {percent(acc)} | |")
    staged = [row for row in report["attacks"] if row.get("stage_acc")]
    if staged:
        lines += ["", "## AutoAttack, accuracy after each stage", "",
                  "Each stage attacks only the examples still robust after the previous ones.", "",
                  "| attack | " + " | ".join(_STAGE_LABEL.values()) + " |",
                  "|---|" + "---|" * len(_STAGE_LABEL)]
        for row in staged:
            cells = " | ".join(percent(row["stage_acc"].get(k)) for k in _STAGE_LABEL)
            lines.append(f"| {row['name']}{'' if row.get('standard', True) else ' (non-standard)'} | {cells} |")
    if report.get("eps_sweep"):
        lines += ["", "## Robust accuracy vs ε", "", "| ε | attack | accuracy |", "|---|---|---|"]
        for row in report["eps_sweep"]:
            lines.append(f"| {row['eps']} | {row['attack']} | {percent(row['robust_acc'])} |")
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("dataset_note"):
        lines += ["", f"Note: {report['dataset_note']}"]
    lines += ["", "Per-example results (indices and packed robust bits per attack) are in report.json."]
    return "\n".join(lines) + "\n"


def plot_eps_sweep(path: Path, sweep: list[dict]) -> None:
    """Robust accuracy against attack strength (paper Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [row["eps_float"] * (255 if row["norm"] == "linf" else 1) for row in sweep]
    ys = [100 * row["robust_acc"] for row in sweep]
    # Markers only: accuracy was measured at these ε and nowhere between them.
    ax.plot(xs, ys, linestyle="none", marker="o")
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(xs)
    ax.margins(x=0.1, y=0.15)
    norm = sweep[0]["norm"] if sweep else "linf"
    ax.set_xlabel("ε × 255 (ℓ∞), measured points only" if norm == "linf" else "ε (ℓ2), measured points only")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{sweep[0]['attack'] if sweep else ''} robust accuracy vs ε")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
