"""Reports: RobustBench-style JSON, a Markdown summary and PNG plots.

JSON is the machine-readable record (eps kept both as written, e.g. ``"8/255"``, and as a float);
Markdown is what a person pastes into a paper draft; the plots are the robust-accuracy-vs-ε curve
(paper Fig. 2) and the training curves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from advtrain import __version__
from advtrain.eval.robust import EvalResult
from advtrain.io.checkpoint import write_atomically


def eval_record(result: EvalResult, attacks: list[Any], *, eps_written: dict[str, str] | None = None) -> dict:
    """The per-attack part of a report."""
    eps_written = eps_written or {}
    rows = []
    for res, attack in zip(result.attacks, attacks, strict=True):
        rows.append({
            "name": res.name, "description": res.description, "family": attack.family,
            "norm": attack.norm, "eps": eps_written.get(res.name, _fraction(attack.eps)),
            "eps_float": attack.eps, "steps": attack.steps, "restarts": attack.restarts,
            "lpips_network": getattr(attack, "network", None), "group": getattr(attack, "group", None),
            "robust_acc": res.robust_acc, "per_class_acc": res.per_class, "seconds": res.seconds,
        })
    return {
        "n_examples": result.n_examples,
        "clean_acc": result.clean_acc,
        "per_class_clean_acc": result.per_class_clean,
        "robust_acc": {r["name"]: r["robust_acc"] for r in rows if r["name"] != "clean"},
        "union_acc": result.union_acc,
        "union_acc_by_group": result.group_union_acc,
        "attacks": rows,
        "time_s": result.seconds,
        "precision": "fp32",
    }


def _fraction(value: float | None) -> str | None:
    """``0.0313…`` → ``"8/255"`` when it is a whole number of 255ths below 1, else the float as text."""
    if value is None:
        return None
    scaled = value * 255
    if 0 < value < 1 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:g}"


def threat_model(attacks: list[Any]) -> str:
    norms = sorted({a.norm for a in attacks if a.family != "clean" and a.norm})
    names = {"linf": "Linf", "l2": "L2", "lpips": "LPIPS", "flow": "StAdv", "color": "ReColorAdv"}
    return "+".join(sorted(names.get(n, n) for n in norms)) or "none"


def masking_warnings(record: dict) -> list[str]:
    """Signs of gradient masking: AutoAttack far below PGD-50 (or PGD far below FGSM's failure)."""
    acc = record["robust_acc"]
    warnings = []
    for aa, pgd in (("aa", "pgd50"), ("aa-l2", "pgd50-l2"), ("aa", "pgd50x10"), ("aa-l2", "pgd50x10-l2")):
        if aa in acc and pgd in acc and acc[pgd] - acc[aa] > 0.03:
            warnings.append(
                f"AutoAttack ({aa}: {acc[aa]:.2%}) beats {pgd} ({acc[pgd]:.2%}) by "
                f"{acc[pgd] - acc[aa]:.1%}: a sign of gradient masking; trust the AutoAttack number.")
    if "fgsm" in acc and "pgd50" in acc and acc["fgsm"] < acc["pgd50"] - 0.01:
        warnings.append("FGSM is stronger than PGD-50: the PGD steps are not working (masking?).")
    return warnings


def write_json(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=2, default=float)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def eval_markdown(report: dict) -> str:
    """A Markdown page for an ``advtrain eval`` report."""
    lines = [
        f"# Robustness report: {report['model']} on {report['dataset']} ({report['split']})",
        "",
        f"- checkpoint: `{report['checkpoint']}` (epoch {report.get('epoch')}, {report.get('checkpoint_kind')})",
        f"- threat model: {report['threat_model']}; n_examples: {report['n_examples']}; "
        f"evaluation in fp32, model in eval mode",
        f"- advtrain {report['advtrain_version']}",
        "",
        "| attack | description | robust acc | time (s) |",
        "|---|---|---|---|",
        f"| clean | no attack | {report['clean_acc']:.2%} | |",
    ]
    for row in report["attacks"]:
        if row["name"] == "clean":
            continue
        lines.append(f"| {row['name']} | {row['description']} | {row['robust_acc']:.2%} | {row['seconds']:.1f} |")
    if report.get("union_acc") is not None:
        lines.append(f"| union | correct under every attack | {report['union_acc']:.2%} | |")
    for group, acc in (report.get("union_acc_by_group") or {}).items():
        lines.append(f"| union of {group} | correct under every {group} attack | {acc:.2%} | |")
    if report.get("eps_sweep"):
        lines += ["", "## Robust accuracy vs ε", "", "| ε | attack | robust acc |", "|---|---|---|"]
        for row in report["eps_sweep"]:
            lines.append(f"| {row['eps']} | {row['attack']} | {row['robust_acc']:.2%} |")
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("dataset_note"):
        lines += ["", f"Note: {report['dataset_note']}"]
    return "\n".join(lines) + "\n"


def plot_eps_sweep(path: Path, sweep: list[dict]) -> None:
    """Robust accuracy against attack strength (paper Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [row["eps_float"] * (255 if row["norm"] == "linf" else 1) for row in sweep]
    ax.plot(xs, [100 * row["robust_acc"] for row in sweep], marker="o")
    norm = sweep[0]["norm"] if sweep else "linf"
    ax.set_xlabel("ε × 255 (ℓ∞)" if norm == "linf" else "ε (ℓ2)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{sweep[0]['attack'] if sweep else ''} robust accuracy vs ε")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_curves(path: Path, metrics: list[dict]) -> None:
    """Training loss and validation accuracies per epoch, with selection epochs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    trained = [m for m in metrics if m.get("phase") != "skip"]
    ax_loss.plot([m["epoch"] + 1 for m in trained], [m["train_loss"] for m in trained], marker=".")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    keys = sorted({k for m in metrics for k in (m.get("val") or {})})
    for key in keys:
        pts = [(m["epoch"] + 1, m["val"][key]) for m in metrics if m.get("val") and key in m["val"]]
        ax_acc.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=key)
    for m in metrics:
        if m.get("selection"):
            for ax in (ax_loss, ax_acc):
                ax.axvline(m["epoch"] + 1, color="grey", alpha=0.3, linestyle="--")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("val accuracy (%)")
    if keys:
        ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run_markdown(report: dict) -> str:
    """A Markdown page for a finished training run."""
    lines = [
        f"# Run report: {report['name']}",
        "",
        f"- model {report['model']} on {report['dataset']}; objective {report['objective']}, "
        f"attack {report['attack']}, selector {report['selector']}",
        f"- epochs run: {report['epochs_run']}; wall time {report['wall_seconds']:.1f}s; "
        f"selection {report['selection_seconds']:.1f}s ({report['selection_share']:.1%})",
        f"- best validation metric {report['best_metric']} at epoch {report['best_epoch']}",
    ]
    speed = report.get("speedup")
    if speed:
        lines.append(
            f"- coreset epoch {speed['coreset_epoch_s']:.2f}s vs full epoch {speed['full_epoch_s']:.2f}s "
            f"({speed['epoch_ratio']:.0%}); training loop {speed['loop_s']:.1f}s (selection "
            f"{speed['selection_share']:.1%}) vs an estimated {speed['estimated_full_loop_s']:.1f}s for full "
            f"training of the same schedule: speed-up {speed['speedup']:.2f}×")
    lines += [
        f"- final validation: {report['final_val']}",
        f"- advtrain {__version__}",
    ]
    test = report.get("test")
    if test:
        lines += ["", f"## Test split (first {test['n_examples']} examples, last model, fp32)", "",
                  "| attack | robust acc |", "|---|---|", f"| clean | {test['clean_acc']:.2%} |"]
        for name, acc in test["robust_acc"].items():
            lines.append(f"| {name} | {acc:.2%} |")
    return "\n".join(lines) + "\n"
