"""``advtrain select --dump-indices``: one selection on a given (or fresh) model, written to .npz.

The pass shows its progress like training, and Ctrl-C / SIGTERM stop it between batches (exit 130)
without writing ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advtrain import build
from advtrain.config.load import load_recipe
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.outputs import claim_output_file, is_select_dump
from advtrain.io.run_files import write_coreset_npz
from advtrain.runtime.device import pick_device, resolve_precision
from advtrain.runtime.interrupts import CommandInterrupted, StopRequest
from advtrain.runtime.seeding import seed_everything
from advtrain.runtime.threads import setup_threads
from advtrain.selection.full_pass import select_coreset


def run_select(recipe_path: str, overrides: list[str], *, checkpoint: Path | None, out: Path,
               device: str | None, threads: str | None = None) -> dict:
    """Select once with the recipe's objective/attack/selector and write indices and weights."""
    from advtrain.ui import console

    recipe = load_recipe(recipe_path, overrides)
    claim_output_file(out, command="select", suffix=".npz", is_own=is_select_dump)  # before any work
    console.info(f"torch uses {setup_threads(threads, recipe.runtime.threads).describe()}")
    dev = pick_device(device or recipe.device)
    seed_everything(recipe.seed)
    ckpt = ckpt_io.load(checkpoint) if checkpoint is not None else None
    epoch = int(ckpt.meta.get("epoch", 0)) if ckpt is not None else 0
    built = build.build_run(recipe, dev, weights=ckpt)
    data, selector = built.data, recipe.components["selector"]
    stop = StopRequest(console.status)
    with stop.installed(), console.SelectionProgress(f"{selector.name} selection") as bar:
        def progress(stage: str, done: int, total: int) -> None:
            bar(stage, done, total)
            if stop.requested:
                raise CommandInterrupted(interrupted_message(stop.name, out, stage, done, total))

        coreset, timing = select_coreset(built.model, built.selection_objective, built.selector, data,
                                         seed=recipe.seed, epoch=epoch, device=dev,
                                         amp_dtype=resolve_precision(recipe.precision, dev), progress=progress)
    hist = torch.bincount(coreset.labels, minlength=data.num_classes).numpy()
    full_hist = torch.bincount(data.train.labels.cpu(), minlength=data.num_classes).numpy()
    extra = {"label_histogram": hist, "train_label_histogram": full_hist, "n_train": np.array(len(data.train)),
             "selector": np.array(selector.name),
             **{k: np.array(v) for k, v in timing.record(len(coreset)).items()}}
    arrays = write_coreset_npz(out, indices=coreset.indices, weights=coreset.weights, labels=coreset.labels,
                               epoch=epoch, extra=extra)
    console.print_table(
        f"{selector.name} selection on {recipe.components['data'].name} ({len(data.train)} samples)",
        ["selected", "weight sum", "attack", "features", "solver", "per-class counts"],
        [(len(coreset), f"{float(coreset.weights.sum()):.1f}", f"{timing.attack_s:.2f}s",
          f"{timing.features_s:.2f}s", f"{timing.solver_s:.3f}s", " ".join(map(str, hist.tolist())))])
    console.info(f"wrote {out}")
    return arrays


def interrupted_message(signal_name: str, out: Path, stage: str, done: int, total: int) -> str:
    """What a stop request during the selection pass means: nothing written, run it again."""
    where = f"after batch {done} of {total} of the selection pass" if stage == "attack" else "before the solver"
    return (f"advtrain select stopped by {signal_name} {where}; nothing was written ({out} is untouched). Run the "
            f"same command again to select.")
