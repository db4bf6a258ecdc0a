"""The end-of-run report: report.json, report.md and curves.png in the output folder."""

from __future__ import annotations

from typing import Any

from advtrain import __version__
from advtrain.eval.report import eval_record, plot_curves, run_markdown, write_json
from advtrain.io.checkpoint import write_atomically


def write_run_report(trainer: Any, result: Any) -> dict[str, Any]:
    """Summarise a finished run from its metrics and final test evaluation."""
    recipe = trainer.recipe
    metrics = trainer.metrics
    selection_s = sum((m.get("selection") or {}).get("total_s", 0.0) for m in metrics)
    epoch_s = sum(m.get("epoch_time", 0.0) for m in metrics)
    attack = recipe.components.get("attack")
    report = {
        "name": recipe.name,
        "model": trainer.model.model_name,
        "dataset": recipe.components["data"].name,
        "objective": recipe.components["objective"].name,
        "attack": attack.name if attack else None,
        "selector": recipe.components["selector"].name,
        "epochs": recipe.schedule.epochs,
        "epochs_run": result.epochs_run,
        "wall_seconds": result.wall_seconds,
        "train_seconds": epoch_s,
        "selection_seconds": selection_s,
        "selection_share": selection_s / epoch_s if epoch_s else 0.0,
        "best_metric": result.best_metric,
        "best_epoch": None if result.best_epoch is None else result.best_epoch + 1,
        "final_val": result.final_val,
        "test": eval_record(result.test, trainer.eval_attacks) if result.test is not None else None,
        "advtrain_version": __version__,
        "recipe": recipe.resolved,
    }
    out = trainer.out_dir
    text = run_markdown(report)
    write_atomically(out / "report.md", lambda tmp: tmp.write_text(text))
    if metrics:
        plot_curves(out / "curves.png", metrics)
    write_json(out / "report.json", report)  # last: its presence marks a finished run (RunFolder.is_finished)
    return report
