"""``advtrain run``: claim the output folder, train, write the report, print the summary.

The output folder is claimed here, once, before anything is built (a folder in use or holding
another run fails fast); the trainer only writes into the folder it is handed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advtrain.config.load import Recipe, load_recipe
from advtrain.io.run_files import LAST
from advtrain.io.run_folder import RunFolder
from advtrain.runtime.distributed import is_main_process
from advtrain.runtime.interrupts import on_signals
from advtrain.runtime.threads import ThreadChoice, setup_threads


def run_training(recipe_path: str, overrides: list[str], *, resume: bool, resume_from: Path | None, force: bool,
                 overwrite: bool, device: str | None, threads: str | None = None) -> None:
    """Train with a recipe; signals outside the epochs stop with a message that fits the run's phase."""
    resolved = load_recipe(recipe_path, overrides)
    thread_choice = setup_threads(threads, resolved.runtime.threads)
    main_process = is_main_process()
    folder = None
    if main_process:
        folder = RunFolder.claim(Path(resolved.output.dir), resuming=resume or resume_from is not None,
                                 overwrite=overwrite)
    state: dict[str, Any] = {"trainer": None}  # the signal handler reads the trainer's phase
    try:
        with on_signals(lambda sig: interrupted_message(sig, state["trainer"], resolved)):
            _train(resolved, state, folder, main_process, resume=resume, resume_from=resume_from, force=force,
                   device=device, threads=thread_choice)
    finally:
        if folder is not None:
            folder.release()


def _train(resolved: Recipe, state: dict[str, Any], folder: RunFolder | None, main_process: bool, *, resume: bool,
           resume_from: Path | None, force: bool, device: str | None, threads: ThreadChoice) -> None:
    from advtrain.reports.run import run_report, write_run_report
    from advtrain.train.loop import Trainer
    from advtrain.ui import console

    checkpoint = resume_from
    if resume and checkpoint is None:
        checkpoint = folder.resume_checkpoint() if folder is not None else Path(resolved.output.dir) / LAST
    if folder is not None and folder.cleared:
        console.info(f"{folder.path} held only what a run that stopped before its first checkpoint left "
                     f"({', '.join(folder.cleared)}); starting it again")
    reporter = console.ProgressReporter() if main_process else console.SilentReporter()
    trainer = state["trainer"] = Trainer(resolved, reporter, device=device, resuming=checkpoint is not None)
    try:
        if main_process:
            precision = "fp32" if trainer.amp_dtype is None else str(trainer.amp_dtype).replace("torch.", "")
            world = f", {trainer.dist.world} processes" if trainer.dist.enabled else ""
            console.info(f"advtrain run {resolved.name} on {trainer.device} ({precision}{world}, "
                         f"{threads.describe()}) → {trainer.out_dir}")
        result = trainer.fit(folder, resume=checkpoint, force=force)
        if main_process and result.finished_before:
            console.info(f"{result.out_dir} already holds the finished run and its report; nothing was changed.")
        elif main_process:
            report = run_report(resolved, result, model_name=trainer.model.model_name,
                                eval_attacks=trainer.eval_attacks)
            print_run_summary(resolved, write_run_report(trainer.files, report, result.metrics), result)
    finally:
        trainer.close()


def interrupted_message(sig: str, trainer: Any, resolved: Recipe) -> str:
    """What a SIGINT/SIGTERM outside the training epochs means for the run, in its own words."""
    last = Path(resolved.output.dir) / LAST
    phase = getattr(trainer, "phase", "setup")
    if phase == "testing":
        return (f"stopped by {sig} during the final test evaluation; every epoch is saved in {last}. Finish the "
                f"run (only the test evaluation and the report are redone) with: advtrain run <recipe> --resume "
                f"(same recipe and overrides).")
    if phase == "reporting":
        return (f"stopped by {sig} while writing the run's report; every epoch is saved in {last}. Write the "
                f"report with: advtrain run <recipe> --resume (same recipe and overrides).")
    return (f"stopped by {sig} while setting up the run (before or between epochs, outside a training step); "
            f"no epoch was lost: checkpoints already in {last.parent} are intact. Run the same command again "
            f"(with --resume if {last} exists).")


def print_run_summary(resolved: Recipe, report: dict, result: Any) -> None:
    """Final validation and test tables, the measured speed-up, where the outputs are."""
    from advtrain.ui import console

    rows = [("clean", f"{report['final_val'].get('clean', float('nan')):.2%}")]
    rows += [(k, f"{v:.2%}") for k, v in report["final_val"].items() if k != "clean"]
    console.print_table(f"final validation ({resolved.eval.split})", ["metric", "accuracy"], rows)
    if report.get("test"):
        test = report["test"]
        trows = [("clean", f"{test['clean_acc']:.2%}")] + [(k, f"{v:.2%}") for k, v in test["robust_acc"].items()]
        console.print_table(f"test (first {test['n_examples']} examples, last model)", ["attack", "accuracy"],
                            trows)
    speed = report.get("speedup")
    if speed and speed.get("speedup") is None:
        console.info(f"speed-up not measured: {speed.get('note') or 'no timed epochs'}")
    elif speed:
        console.info(f"a coreset epoch took {speed['coreset_epoch_s']:.2f}s against {speed['full_epoch_s']:.2f}s "
                     f"for a full epoch ({speed['epoch_ratio']:.0%}); training-loop speed-up against full "
                     f"training of the same schedule (estimated from the full epochs): {speed['speedup']:.2f}× "
                     f"(selection {speed['selection_share']:.0%} of the loop)")
    if report.get("epoch_split"):
        from advtrain.reports.run import split_line

        console.info(f"time per epoch: {split_line(report['epoch_split'])}")
    console.info(f"done in {result.wall_seconds:.1f}s; outputs in {result.out_dir}")
