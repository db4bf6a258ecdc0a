"""The end-of-run report: report.json, report.md and curves.png (written by the run folder's RunFiles).

:func:`run_report` makes the :class:`~advtrain.io.run_records.RunReport` from values (the recipe, the
run's result, the model's name and the evaluation attacks), :func:`write_run_report` writes it. The
timing helpers read metrics lines as JSON mappings, the form ``metrics.jsonl`` holds on disk, so
``advtrain compare`` uses them on runs it reads back.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtrain import __version__
from advtrain.config.recipe import Recipe
from advtrain.eval.robust import EvalResult
from advtrain.io.run_files import RunFiles
from advtrain.io.run_records import EPOCH_PARTS, MetricsLine, RunReport
from advtrain.reports.evaluation import eval_record, percent


@dataclass
class RunResult:
    """What a finished run reports back to the CLI."""

    out_dir: Path
    epochs_run: int
    wall_seconds: float
    final_val: dict[str, float]
    test: EvalResult | None
    best_metric: float | None
    best_epoch: int | None
    metrics: list[MetricsLine] = field(default_factory=list)
    finished_before: bool = False  # --resume of a run that had already finished: nothing was redone
    compile: dict[str, Any] | None = None  # train.compile: {setting, mode, compiled, warmup_s, fallback}


def loop_seconds(metrics: Sequence[dict[str, Any]]) -> tuple[float, float, float]:
    """(training-loop seconds, training seconds, selection seconds): the loop as the paper times it,
    training epochs plus selection passes (validation and checkpointing left out)."""
    train_s = sum(float(m.get("train_time") or 0.0) for m in metrics)
    selection_s = sum(float((m.get("selection") or {}).get("total_s", 0.0)) for m in metrics)
    return train_s + selection_s, train_s, selection_s


def epoch_seconds(metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median training seconds of a full-data epoch and of a coreset epoch (the phases the run had)."""
    out = {}
    for phase in ("full", "coreset"):
        times = [float(m["train_time"]) for m in metrics if m.get("phase") == phase and m.get("train_time")]
        if times:
            out[phase] = statistics.median(times)
    return out


def speedup_estimate(metrics: Sequence[dict[str, Any]], epochs: int, *, max_steps: int | None = None,
                     batch_size: int | None = None) -> dict[str, Any] | None:
    """A coreset run's loop against full training of the same schedule, from its own epochs.

    Full training is estimated as ``epochs`` × the median full-data (warm-start) epoch, timed in
    the same process as the coreset epochs, so a machine busier or quieter than another run's does
    not enter it. ``None`` when the run had no full-data or no coreset epoch to measure. When
    ``train.max_steps_per_epoch`` (``max_steps``) cuts the coreset epochs to as many samples as the
    full ones, both kinds of epoch do the same work: ``speedup`` is then None and ``note`` says why.
    """
    per_epoch = epoch_seconds(metrics)
    if "full" not in per_epoch or "coreset" not in per_epoch:
        return None
    loop_s, _, selection_s = loop_seconds(metrics)
    full_loop = epochs * per_epoch["full"]
    estimate: dict[str, Any] = {
        "full_epoch_s": per_epoch["full"], "coreset_epoch_s": per_epoch["coreset"],
        "epoch_ratio": per_epoch["coreset"] / per_epoch["full"], "loop_s": loop_s,
        "estimated_full_loop_s": full_loop, "speedup": full_loop / loop_s if loop_s else None,
        "selection_share": selection_s / loop_s if loop_s else 0.0, "note": None}
    samples = {phase: [int(m["samples"]) for m in metrics if m.get("phase") == phase and m.get("samples")]
               for phase in ("full", "coreset")}
    if max_steps is not None and samples["full"] and samples["coreset"] \
            and min(samples["coreset"]) >= max(samples["full"]):
        estimate["speedup"] = None
        steps = f"{max_steps} steps" + (f" of {batch_size}" if batch_size else "")
        estimate["note"] = (f"train.max_steps_per_epoch={max_steps} caps both kinds of epoch at {steps}, so "
                            f"coreset and full-data epochs do the same work: no speed-up to measure")
    return estimate


def epoch_split(metrics: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the wall time of the run's epochs went: each part's mean seconds per epoch and its share.

    From the epochs whose lines hold a ``timing`` split (None when none does: a run of an earlier
    advtrain); skipped epochs (no training) are left out. ``overhead_share`` is the share of the
    wall time that is neither training nor selection, the loop's own cost (validation, guard,
    writes and the rest). ``compile_warmup_s`` is the part of ``train`` that compilation took.
    """
    timed = [m for m in metrics if isinstance(m.get("timing"), dict) and m.get("phase") != "skip"]
    if not timed:
        return None
    n = len(timed)
    totals = {part: sum(float(m["timing"].get(part) or 0.0) for m in timed) for part in EPOCH_PARTS}
    wall = sum(totals.values())
    warmup = sum(float(m.get("compile_warmup_s") or 0.0) for m in timed)
    return {"epochs": n, "epoch_s": wall / n, "mean_s": {part: v / n for part, v in totals.items()},
            "share": {part: v / wall if wall else 0.0 for part, v in totals.items()},
            "overhead_share": 1.0 - (totals["train"] + totals["selection"]) / wall if wall else 0.0,
            "compile_warmup_s": warmup or None}


def split_line(split: dict[str, Any]) -> str:
    """``10.42s = train 8.49 + eval 1.29 + save 0.40 + other 0.00 (mean of 3 epochs; 18.5% neither ...)``.

    Training and ``other`` are always shown, the other parts when they took at least 5 ms per epoch.
    """
    mean = split["mean_s"]
    shown = [p for p in EPOCH_PARTS if p in ("train", "other") or mean[p] >= 0.005]
    terms = []
    for part in shown:
        term = f"{part} {mean[part]:.2f}"
        if part == "train" and split.get("compile_warmup_s"):
            term += f" (incl. compile warm-up {split['compile_warmup_s']:.1f}s once)"
        terms.append(term)
    epochs = "1 epoch" if split["epochs"] == 1 else f"mean of {split['epochs']} epochs"
    return (f"{split['epoch_s']:.2f}s = " + " + ".join(terms)
            + f" ({epochs}; {split['overhead_share']:.1%} neither training nor selection)")


def run_report(recipe: Recipe, result: RunResult, *, model_name: str, eval_attacks: Sequence[Any]) -> RunReport:
    """Summarise a finished run of ``recipe`` from its metrics lines and final test evaluation."""
    metrics = [m.to_json() for m in result.metrics]
    selection_s = sum((m.get("selection") or {}).get("total_s", 0.0) for m in metrics)
    epoch_s = sum(m.get("epoch_time", 0.0) for m in metrics)
    attack = recipe.components.get("attack")
    return RunReport(
        name=recipe.name, model=model_name, dataset=recipe.components["data"].name,
        objective=recipe.components["objective"].name, attack=attack.name if attack else None,
        selector=recipe.components["selector"].name, epochs=recipe.schedule.epochs, epochs_run=result.epochs_run,
        wall_seconds=result.wall_seconds, train_seconds=epoch_s, selection_seconds=selection_s,
        selection_share=selection_s / epoch_s if epoch_s else 0.0, loop_seconds=loop_seconds(metrics)[0],
        speedup=speedup_estimate(metrics, recipe.schedule.epochs, max_steps=recipe.train.max_steps_per_epoch,
                                 batch_size=recipe.components["data"].params.batch_size),
        best_metric=result.best_metric, best_metric_name=best_metric_name(metrics), best_split=recipe.eval.split,
        best_epoch=None if result.best_epoch is None else result.best_epoch + 1, final_val=result.final_val,
        test=eval_record(result.test, list(eval_attacks)) if result.test is not None else None,
        compile=result.compile, epoch_split=epoch_split(metrics), advtrain_version=__version__,
        recipe=recipe.resolved)


def write_run_report(files: RunFiles, report: RunReport, metrics: Sequence[MetricsLine]) -> dict[str, Any]:
    """Write ``report`` (report.json, report.md) and the curves of ``metrics``; the report as JSON."""
    record = report.to_json()
    lines = [m.to_json() for m in metrics]
    files.write_report(record, run_markdown(record), curves_png(lines) if lines else None)
    return record


def best_metric_name(metrics: Sequence[dict[str, Any]]) -> str | None:
    """What the best model is chosen by: the first robust validation accuracy, else clean (as the loop does)."""
    val = next((m["val"] for m in metrics if m.get("val")), None)
    if not val:
        return None
    return next((k for k in val if k != "clean"), "clean")


def curves_png(metrics: list[dict]) -> bytes:
    """Training loss and validation accuracies per epoch, with selection epochs marked (a PNG image)."""
    import io

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
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    return image.getvalue()


def _best_line(report: dict) -> str:
    """``best.safetensors``: which accuracy chose it, its value and its (1-based) epoch."""
    if report.get("best_metric") is None:
        return "- best model: none (no validation ran)"
    name = report.get("best_metric_name") or "validation accuracy"
    what = "clean accuracy" if name == "clean" else f"robust accuracy under {name}"
    split = f", {report['best_split']} split" if report.get("best_split") else ""
    return (f"- best model (best.safetensors): {what} {percent(report['best_metric'])} on validation{split}, "
            f"at epoch {report['best_epoch']} of {report['epochs']}")


def run_markdown(report: dict) -> str:
    """A Markdown page for a finished training run (epochs numbered from 1, as on screen)."""
    lines = [
        f"# Run report: {report['name']}",
        "",
        f"- model {report['model']} on {report['dataset']}; objective {report['objective']}, "
        f"attack {report['attack']}, selector {report['selector']}",
        f"- epochs run: {report['epochs_run']}; wall time {report['wall_seconds']:.1f}s; "
        f"selection {report['selection_seconds']:.1f}s ({report['selection_share']:.1%})",
        _best_line(report),
    ]
    compiled = report.get("compile")
    if compiled:
        mode = f", mode {compiled['mode']}" if compiled.get("mode", "default") != "default" else ""
        lines.append(f"- torch.compile ({compiled['setting']}{mode}): " + (
            f"warm-up {compiled['warmup_s']:.1f}s (first compiled call)" if compiled["compiled"] and
            compiled["warmup_s"] is not None else f"fell back to eager ({compiled['fallback']})"
            if not compiled["compiled"] else "compiled"))
    if report.get("epoch_split"):
        lines.append(f"- time per epoch: {split_line(report['epoch_split'])}")
    speed = report.get("speedup")
    if speed and speed.get("speedup") is None:
        lines.append(f"- speed-up: not measured; {speed.get('note') or 'no timed epochs'}")
    elif speed:
        lines.append(
            f"- coreset epoch {speed['coreset_epoch_s']:.2f}s vs full epoch {speed['full_epoch_s']:.2f}s "
            f"({speed['epoch_ratio']:.0%}); training loop {speed['loop_s']:.1f}s (selection "
            f"{speed['selection_share']:.1%}) vs an estimated {speed['estimated_full_loop_s']:.1f}s for full "
            f"training of the same schedule: speed-up {speed['speedup']:.2f}×")
    lines += [
        f"- final validation: {', '.join(f'{k} {percent(v)}' for k, v in (report['final_val'] or {}).items())}",
        f"- advtrain {__version__}",
    ]
    test = report.get("test")
    if test:
        lines += ["", f"## Test split (first {test['n_examples']} examples, last model, fp32)", "",
                  "| attack | robust acc |", "|---|---|", f"| clean | {percent(test['clean_acc'])} |"]
        for name, acc in test["robust_acc"].items():
            lines.append(f"| {name} | {percent(acc)} |")
    return "\n".join(lines) + "\n"
