"""The training loop: setup → for epoch: maybe select → train → evaluate → save.

Randomness is re-derived from ``(seed, epoch)`` at the start of every epoch (global RNGs for
attack starts and dropout, an explicit generator for data order and augmentation). Resuming from
the end of epoch ``e`` therefore replays epoch ``e+1`` exactly as an uninterrupted run would.

What is not the happy path lives beside it: the files of the run folder in
:mod:`advtrain.io.run_files`, where an interrupted epoch stands in :mod:`advtrain.train.progress`,
signals in :class:`advtrain.runtime.interrupts.StopRequest`, the data-parallel loss in
:mod:`advtrain.runtime.distributed`, early stops and their messages in :mod:`advtrain.train.stops`,
the catastrophic-overfitting guard in :mod:`advtrain.train.overfit`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain import build
from advtrain.config.read import parse_stored_recipe
from advtrain.config.recipe import Recipe
from advtrain.errors import CheckpointError, DivergenceError, UserError
from advtrain.eval.robust import EvalResult, evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.run_files import RunFiles
from advtrain.io.run_folder import RunFolder, new_run_id
from advtrain.objectives import weighted_mean
from advtrain.reports.loggers import Loggers
from advtrain.runtime import distributed
from advtrain.runtime.device import (
    CUDA_OUT_OF_MEMORY,
    autocast,
    enable_cuda_autotuning,
    pick_device,
    resolve_precision,
)
from advtrain.runtime.interrupts import StopRequest
from advtrain.runtime.seeding import derive_seed, generator, seed_everything
from advtrain.selection import Coreset
from advtrain.train import overfit, stops
from advtrain.train.progress import EpochProgress
from advtrain.train.step_monitor import FiniteState, StepMonitor, StepTotals, grads_finite
from advtrain.train.stops import TrainingInterrupted
from advtrain.ui.console import Reporter

__all__ = ["RunResult", "Trainer", "TrainingInterrupted", "epoch_phase", "recipe_differences", "selection_due"]

#: Recipe keys that may change between a checkpoint and a resumed run.
RESUMABLE_KEYS = ("name", "device", "output", "eval", "runtime", "log")


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
    metrics: list[dict[str, Any]] = field(default_factory=list)
    finished_before: bool = False  # --resume of a run that had already finished: nothing was redone


def epoch_phase(schedule: Any, epoch: int, selector_name: str) -> str:
    """``full`` (warm start or selector=full), ``skip`` (reference variant) or ``coreset``."""
    if selector_name == "full" or epoch < schedule.warm_start_epochs:
        return "full"
    if epoch < schedule.warm_start_epochs + schedule.skip_epochs:
        return "skip"
    return "coreset"


def selection_due(schedule: Any, epoch: int, coreset: Coreset | None) -> bool:
    """Select at the first coreset epoch and every ``select_every`` epochs after it."""
    first = schedule.warm_start_epochs + schedule.skip_epochs
    return coreset is None or (epoch - first) % schedule.select_every == 0


def recipe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Key paths whose values differ between two resolved recipes (ignoring RESUMABLE_KEYS)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if not prefix and key in RESUMABLE_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(recipe_differences(a, b, path + "."))
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r} vs recipe {b!r}")
    return diffs


class Trainer:
    """Holds the built components of one run; :meth:`fit` is the readable loop."""

    def __init__(self, recipe: Recipe, reporter: Reporter, *, device: str | None = None,
                 resuming: bool = False) -> None:
        self.recipe = recipe
        self.reporter = reporter
        self.dist = distributed.context_from_env()
        self.device = distributed.init(self.dist, pick_device(device or recipe.device))
        self.amp_dtype = resolve_precision(recipe.precision, self.device)
        seed_everything(recipe.seed)
        parts = build.build_run(recipe, self.device, initial_weights=not resuming)  # resume: the checkpoint's
        enable_cuda_autotuning(self.device)
        self.data, self.model, self.selector = parts.data, parts.model, parts.selector
        self.train_model = self._setup_train_model()
        self.objective, self.selection_objective = parts.objective, parts.selection_objective
        self.optimizer, self.lr_factor, self.eval_attacks = parts.optimizer, parts.lr_factor, parts.eval_attacks
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.out_dir = Path(recipe.output.dir)
        self.files = RunFiles(self.out_dir, writes=self.dist.is_main)  # rank 0 alone writes
        self.stop = StopRequest(self.reporter.message)
        self.epoch = 0
        self.step = 0
        self.coreset: Coreset | None = None
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self._new_best = False
        self.probe_best: float | None = None  # best overfitting-guard probe accuracy so far
        self.metrics: list[dict[str, Any]] = []
        self.stopped_early = False
        self.resume_point: EpochProgress | None = None  # the interrupted epoch a mid-epoch checkpoint continues
        self.run_id: str | None = None  # recorded in the run folder and in every checkpoint
        self.phase = "setup"  # setup | training | testing | reporting (for the interruption message)
        self.loggers = Loggers([])  # the log section's, once the run folder is set up

    def _setup_train_model(self) -> nn.Module:
        """The model the training step calls: DDP-wrapped when data parallel, compiled with ``train.compile``."""
        train_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(self.model, device_ids=ids)
        return torch.compile(train_model) if self.recipe.train.compile else train_model

    # ------------------------------------------------------------------ loop
    def fit(self, folder: RunFolder | None, *, resume: Path | None = None, force: bool = False) -> RunResult:
        """Train to ``schedule.epochs`` (continuing checkpoint ``resume``) in the claimed run ``folder``.

        The caller claims ``folder`` once, before building anything (``advtrain run`` does it in
        :func:`advtrain.commands.train.run_training`); ranks other than 0 pass None. Resuming a run
        that already finished and wrote its report changes nothing.
        """
        start = time.perf_counter()
        if not self._setup_run(folder, resume, force):
            return RunResult(self.out_dir, 0, time.perf_counter() - start, {}, None, self.best_metric,
                             self.best_epoch, self.metrics, finished_before=True)
        schedule, first_epoch = self.recipe.schedule, self.epoch
        with self._epoch_loop(first_epoch):
            for epoch in range(first_epoch, schedule.epochs):
                self.epoch, epoch_start = epoch, time.perf_counter()
                phase = epoch_phase(schedule, epoch, self.recipe.components["selector"].name)
                progress = self._resumed_epoch() or self._maybe_select(epoch, phase)
                record = {"epoch": epoch, "phase": phase, **self._train(epoch, phase, progress)}
                collapsed = self._evaluate(epoch, phase, record)
                record["epoch_time"] = time.perf_counter() - epoch_start
                if not self._save(epoch, record, collapsed):
                    break
        return self._finish(start, first_epoch)

    def _setup_run(self, folder: RunFolder | None, resume: Path | None, force: bool) -> bool:
        """Continue ``resume`` (or start a new run id) and record the run; False: it had already finished."""
        if folder is None and self.dist.is_main:
            raise ValueError("Trainer.fit needs the claimed run folder: RunFolder.claim(output.dir, ...)")
        self.phase = "training"
        if resume is not None:
            self.load(resume, force=force, folder=folder)
            if self.epoch >= self.recipe.schedule.epochs and self.resume_point is None and folder is not None \
                    and folder.is_finished():
                self.reporter.message(f"run {self.recipe.name} already finished all {self.recipe.schedule.epochs} "
                                      f"epochs and wrote its report; nothing to do (its files are unchanged)")
                return False
            self.reporter.message(f"resumed from {resume} at epoch {self.epoch + 1}")
        else:
            self.run_id = new_run_id()
        if folder is not None:
            folder.record_run_id(self.run_id)
            self.files.write_recipe(self.recipe.to_yaml())
        self.loggers = Loggers.build(self.recipe.log, self.out_dir, first_epoch=self.epoch, writes=self.dist.is_main)
        return True

    @contextmanager
    def _epoch_loop(self, first_epoch: int) -> Iterator[None]:
        """Progress display and SIGINT/SIGTERM handling while the epochs run."""
        self.reporter.start(self.recipe.schedule.epochs, first_epoch)
        try:
            with self.stop.installed():
                yield
        finally:
            self.reporter.stop()

    def _resumed_epoch(self) -> EpochProgress | None:
        """The interrupted epoch a mid-epoch checkpoint continues, once (its RNG state was restored with it)."""
        progress, self.resume_point = self.resume_point, None
        return progress

    def _maybe_select(self, epoch: int, phase: str) -> EpochProgress:
        """Seed a fresh epoch, then select a coreset when one is due; the epoch starts at batch 0."""
        rank = (self.dist.rank,) if self.dist.enabled else ()  # own attack starts per rank
        torch.manual_seed(derive_seed(self.recipe.seed, "epoch", epoch, *rank))
        due = phase == "coreset" and selection_due(self.recipe.schedule, epoch, self.coreset)
        return EpochProgress(epoch, selection=self.select(epoch) if due else None)

    def _train(self, epoch: int, phase: str, progress: EpochProgress) -> dict[str, Any]:
        """Train the epoch (a ``skip`` epoch only advances the step count); its metrics entries."""
        if phase == "skip":
            record: dict[str, Any] = {"train_loss": float("nan"), "train_acc": float("nan"), "samples": 0}
            self.step += self._batches_per_epoch(len(self.data.train))
        else:
            train_start = time.perf_counter()
            record = self.train_epoch(epoch, phase, progress)
            record["train_time"] = time.perf_counter() - train_start
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["coreset_size"] = None if phase != "coreset" else int(len(self.coreset.indices))
        record["selection"] = progress.selection
        return record

    def _evaluate(self, epoch: int, phase: str, record: dict[str, Any]) -> bool:
        """Validate when due (tracking the best model), then the overfitting guard; True: training collapsed."""
        if self._eval_due(epoch) and self.dist.is_main:
            eval_start = time.perf_counter()
            val = self.validate().summary()
            record["eval_time"] = time.perf_counter() - eval_start
            record["val"] = val
            self._track_best(val, epoch)
        return self._overfit_guard(phase, record)

    def _save(self, epoch: int, record: dict[str, Any], collapsed: bool) -> bool:
        """Log the epoch and save its checkpoints; False: the overfitting guard stopped the run."""
        self.metrics.append(record)
        self.files.append_metrics(record)
        self.loggers.log_epoch(record, self.metrics)  # metrics.csv / TensorBoard when the log section asks
        if collapsed:
            self._revert_after_collapse(epoch, record)
            return False
        self._save_checkpoints(epoch)
        self.reporter.epoch_end(epoch, record)
        if distributed.any_rank(self.dist, self.stop.requested, self.device):  # a signal outside a training step
            raise TrainingInterrupted(stops.interrupt_message(self.stop.name, self.files.last, epoch=epoch))
        return True

    def _finish(self, start: float, first_epoch: int) -> RunResult:
        """The final test evaluation (rank 0) and what the run reports back."""
        test = None
        self.phase = "testing"
        if self.recipe.eval.n_examples > 0 and len(self.data.test) > 0 and self.dist.is_main:
            test = self.evaluate_split(self.data.test)
        self.phase = "reporting"
        last_val = next((m["val"] for m in reversed(self.metrics) if m.get("val")), {})
        epochs_run = sum(1 for m in self.metrics if m["epoch"] >= first_epoch)
        return RunResult(self.out_dir, epochs_run, time.perf_counter() - start, last_val, test, self.best_metric,
                         self.best_epoch, self.metrics)

    # ----------------------------------------------------------------- epoch
    def train_epoch(self, epoch: int, phase: str, progress: EpochProgress | None = None) -> dict[str, Any]:
        """One pass over the full training set or the coreset, with per-sample weights.

        ``progress`` past batch 0 continues an interrupted epoch: its first batches are drawn again
        (so the data order and augmentation generator advance exactly as before) but not trained
        on, and its sums carry on. Statistics stay on the device and are read every
        ``train.log_every`` batches (:meth:`_read_window`), where divergence and stop requests are acted on.
        """
        progress = progress or EpochProgress(epoch)
        indices, weights = self._epoch_samples(phase)
        batches = self._batches_per_epoch(len(indices))
        gen = generator(derive_seed(self.recipe.seed, "data", epoch))
        self.reporter.epoch_start(epoch, batches, phase)
        self.train_model.train()
        monitor = StepMonitor(self.device, loss_sum=progress.loss_sum, correct=progress.correct, seen=progress.seen)
        finite = self._finite_state(progress)
        for b, (x, y, idx) in enumerate(self._batches(indices, gen)):
            if b >= batches:
                break
            if b < progress.batch:  # trained before the interruption
                continue
            self._train_step(epoch, b, batches, x, y, idx, weights, monitor)
            # One process stops after the step a signal interrupted; data-parallel ranks stop together
            # at the first read after the request reached every rank through the step's all-reduce.
            stop_here = self.stop.requested and not self.dist.enabled
            if (b + 1) % self.recipe.train.log_every == 0 or b + 1 == batches or stop_here:
                finite = self._read_window(monitor, finite, b + 1, batches, stop_here)
        totals = monitor.read()
        return {"train_loss": totals.loss_sum / max(totals.seen, 1), "train_acc": totals.correct / max(totals.seen, 1),
                "samples": int(totals.seen)}

    def _epoch_samples(self, phase: str) -> tuple[Tensor, Tensor | None]:
        """The training indices of this epoch and their per-sample weights on the device (None: all 1)."""
        n_train = len(self.data.train)
        if phase != "coreset":
            return torch.arange(n_train), None
        weights = torch.zeros(n_train)
        weights[self.coreset.indices] = self.coreset.weights.float().cpu()
        return self.coreset.indices, weights.to(self.device)

    def _batches(self, indices: Tensor, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        from advtrain.data import iterate_batches

        return iterate_batches(self.data.train, indices, self.data.batch_size, shuffle=True, generator=gen,
                               augment=self.data.augment, padding=self.data.padding, device=self.device,
                               num_workers=self.data.num_workers, shard=(self.dist.rank, self.dist.world))

    def _batches_per_epoch(self, n: int) -> int:
        batches = math.ceil(n / self.data.batch_size)
        cap = self.recipe.train.max_steps_per_epoch
        return min(batches, cap) if cap else batches

    def _read_window(self, monitor: StepMonitor, finite: FiniteState, done: int, batches: int,
                     stop_here: bool) -> FiniteState:
        """The one host sync of a ``train.log_every`` window, after ``done`` batches.

        Rolls back a divergence, reports progress, and saves and stops on a signal; returns the
        finite state the next window rolls back to.
        """
        totals = monitor.read()
        if totals.first_bad_batch is not None:
            self._diverged(totals, totals.first_bad_batch, finite)
        self.reporter.progress(done, totals.loss_sum / max(totals.seen, 1), totals.correct / max(totals.seen, 1))
        progress = finite.progress.advanced(done, totals)
        if stop_here or totals.stop:
            path = self._save_in_epoch(progress)
            raise TrainingInterrupted(stops.interrupt_message(self.stop.name, path, epoch=progress.epoch, batch=done))
        return self._finite_state(progress) if done < batches else finite

    def _train_step(self, epoch: int, b: int, batches: int, x: Tensor, y: Tensor, idx: Tensor,
                    weights_dev: Tensor | None, monitor: StepMonitor) -> None:
        """Attack, weighted loss, backward, optimizer step; its figures go to ``monitor`` (no host sync)."""
        factor = self.lr_factor(epoch + b / batches, self.recipe.schedule.epochs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        try:
            with autocast(self.device, self.amp_dtype):
                out = self.objective.loss(self.train_model, x, y)
            batch_weights = None if weights_dev is None else weights_dev[idx.to(self.device, non_blocking=True)]
            loss, loss_value, correct, count, stop = self._step_loss(out.losses.float(), out.logits, y, batch_weights)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        except CUDA_OUT_OF_MEMORY:
            raise UserError(stops.oom_message(epoch, b, self.data.batch_size, self.files.last)) from None
        # fp16: the gradient scaler skips steps with inf/NaN gradients and lowers its scale itself.
        monitor.record(b, loss_value, correct, count, grads_finite(self.model) if self.scaler is None else None, stop)
        if self.recipe.train.grad_clip_value is not None:
            nn.utils.clip_grad_value_(self.model.parameters(), self.recipe.train.grad_clip_value)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1

    def _step_loss(self, losses: Tensor, logits: Tensor, y: Tensor,
                   weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | int, Tensor | None]:
        """The loss to back-propagate plus the batch's loss value, correct count, size and stop flag.

        Data parallel: global over the ranks' slices of the batch (:func:`distributed.global_weighted_loss`).
        """
        correct = (logits.detach().argmax(1) == y).sum()
        if self.dist.enabled:
            return distributed.global_weighted_loss(self.dist, losses, weights, correct, len(y), self.stop.requested)
        loss = weighted_mean(losses, weights)
        return loss, loss.detach(), correct, len(y), None

    # ------------------------------------------------------ stopping early
    def _finite_state(self, progress: EpochProgress) -> FiniteState:
        return FiniteState.take(self.model, self.optimizer, self.device, progress=progress, step=self.step)

    def _diverged(self, totals: StepTotals, bad_batch: int, finite: FiniteState) -> None:
        """Roll back to the last finite state of this epoch, save it, and stop with a hint."""
        finite.restore(self.model, self.optimizer, self.device)
        self.step = finite.step
        at = finite.progress
        saved = self._save_in_epoch(at) if finite.is_finite() else None
        kept = stops.rollback_kept(saved, at.batch, self.files.last)
        raise DivergenceError(stops.divergence_message(at.epoch, bad_batch, totals.bad_kind, kept))

    def _save_in_epoch(self, progress: EpochProgress) -> Path:
        """Save mid-epoch: a resume continues right after ``progress.batch`` batches of ``progress.epoch``."""
        state = self.state()
        state.epoch = progress.epoch - 1  # the last *completed* epoch
        state.extra = progress.to_extra()
        path = self.files.save_checkpoint(state, "last")
        distributed.barrier(self.dist)
        return path

    def _overfit_guard(self, phase: str, record: dict[str, Any]) -> bool:
        """The catastrophic-overfitting probe after a trained epoch; rank 0 decides for every rank."""
        collapsed = False
        if self.recipe.train.overfit_guard and phase != "skip" and self.dist.is_main:
            attack = self.recipe.components["attack"]
            probe = overfit.check_overfit(self.model, self.data.train, attack.params if attack else None,
                                          batch_size=self.data.batch_size, num_classes=self.data.num_classes,
                                          device=self.device, best=self.probe_best,
                                          drop=self.recipe.train.overfit_drop)
            record["overfit_probe_pgd5"] = probe.accuracy
            self.probe_best, collapsed = probe.best, probe.collapsed
        return distributed.rank0_flag(self.dist, collapsed, self.device)

    def _revert_after_collapse(self, epoch: int, record: dict[str, Any]) -> None:
        """Stop after a collapse with the previous epoch's model (``last.safetensors``) back in place."""
        self.reporter.epoch_end(epoch, record)
        if self.dist.is_main:
            self.reporter.message(overfit.collapse_message(epoch, self.probe_best, record["overfit_probe_pgd5"],
                                                           self.files.last), style="red")
        self.stopped_early = True
        if self.files.last.exists():
            ckpt_io.load_model_weights(ckpt_io.load(self.files.last), self.model)

    # ------------------------------------------------------------ selection
    def select(self, epoch: int) -> dict[str, float]:
        """Attack the whole training set, take last-layer gradients, solve for the coreset."""
        from advtrain.selection.full_pass import select_coreset

        # The selection pass draws its own attack starts, so training randomness is the same
        # whether or not an epoch selects (and a resumed run replays it exactly).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(self.recipe.seed, "select-attack", epoch))
            coreset, timing = select_coreset(self.model, self.selection_objective, self.selector, self.data,
                                             seed=self.recipe.seed, epoch=epoch, device=self.device,
                                             amp_dtype=self.amp_dtype, ctx=self.dist)
        self.coreset = coreset
        self.files.write_coreset(epoch, indices=coreset.indices, weights=coreset.weights, labels=coreset.labels)
        info = timing.record(len(coreset))
        self.reporter.message(
            f"selected {info['size']} of {len(self.data.train)} samples with {self.recipe.components['selector'].name} "
            f"at epoch "
            f"{epoch + 1}: attack {timing.attack_s:.1f}s, features {timing.features_s:.1f}s, "
            f"solver {timing.solver_s:.2f}s")
        return info

    # ------------------------------------------------------------ evaluation
    def _eval_due(self, epoch: int) -> bool:
        every = self.recipe.eval.every
        last = epoch == self.recipe.schedule.epochs - 1
        return last or (every > 0 and (epoch + 1) % every == 0)

    def evaluate_split(self, source: Any) -> EvalResult:
        return evaluate(self.model, source, self.eval_attacks, n_examples=self.recipe.eval.n_examples,
                        batch_size=self.recipe.eval.batch_size or self.data.batch_size, device=self.device,
                        num_classes=self.data.num_classes)

    def validate(self) -> EvalResult:
        split = self.data.val if self.recipe.eval.split == "val" and len(self.data.val) else self.data.test
        return self.evaluate_split(split)

    def _track_best(self, val: dict[str, float], epoch: int) -> None:
        robust = [v for k, v in val.items() if k != "clean"]
        metric = robust[0] if robust else val["clean"]
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric, self.best_epoch = metric, epoch
            self._new_best = True

    # ------------------------------------------------------------- state
    def state(self) -> ckpt_io.TrainingState:
        return ckpt_io.TrainingState(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), epoch=self.epoch,
            step=self.step, recipe_yaml=self.recipe.to_yaml(), model_name=self.model.model_name,
            num_classes=self.data.num_classes, in_chans=self.data.image_shape[0],
            best_metric=self.best_metric, best_epoch=self.best_epoch,
            coreset_indices=None if self.coreset is None else self.coreset.indices,
            coreset_weights=None if self.coreset is None else self.coreset.weights,
            coreset_epoch=None if self.coreset is None else self.coreset.epoch,
            scaler=None if self.scaler is None else self.scaler.state_dict(), run_id=self.run_id,
        )

    def _save_checkpoints(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        state = self.state()
        self.files.save_checkpoint(state, "last")
        if self._new_best:
            self.files.save_checkpoint(state, "best")
            self._new_best = False
        keep = self.recipe.output.keep_every
        if keep and (epoch + 1) % keep == 0:
            self.files.save_checkpoint(state, "epoch", epoch=epoch + 1)

    def load(self, path: Path, *, force: bool, folder: RunFolder | None = None) -> None:
        """Continue from a checkpoint of this same recipe (model, optimizer, coreset, epoch).

        Everything is checked before the run folder changes: the checkpoint (format, metadata,
        tensors), that it belongs to the run in ``folder``, the model, the recipe, the optimizer
        state and the coreset.
        """
        ckpt = ckpt_io.load(path)
        self.run_id = ckpt.meta.get("run_id") if folder is None else folder.resume_run_id(ckpt.meta.get("run_id"),
                                                                                            path)
        ckpt_io.check_model_matches(ckpt, self.model.model_name, self.data.num_classes)  # before the recipe diff
        self._check_recipe(ckpt, path, force)
        meta = ckpt.meta
        if "coreset.indices" in ckpt.tensors:
            indices, n_train = ckpt.tensors["coreset.indices"], len(self.data.train)
            if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_train):
                raise CheckpointError(f"checkpoint '{path}': tensor 'coreset.indices' holds indices outside "
                                      f"0..{n_train - 1}, the training samples of this recipe's data.")
        ckpt_io.check_optimizer_tensors(ckpt, [p for g in self.optimizer.param_groups for p in g["params"]])
        ckpt_io.load_model_weights(ckpt, self.model)
        optim_state = ckpt_io.optimizer_state(ckpt)
        if optim_state is not None:
            try:
                self.optimizer.load_state_dict(optim_state)
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise CheckpointError(f"checkpoint '{path}': its optimizer state does not fit optimizer "
                                      f"'{self.recipe.components['optim'].name}' ({err}).") from None
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.epoch = int(meta["epoch"]) + 1
        self.step = int(meta["step"])
        in_epoch = EpochProgress.from_extra(meta.get("extra"))
        if in_epoch is not None:
            self.epoch = in_epoch.epoch
            self.resume_point = in_epoch if in_epoch.batch > 0 else None  # at batch 0 the epoch starts afresh
        self.best_metric, self.best_epoch = meta.get("best_metric"), meta.get("best_epoch")
        if "coreset.indices" in ckpt.tensors:
            self.coreset = Coreset(ckpt.tensors["coreset.indices"], ckpt.tensors["coreset.weights"],
                                   int(meta["coreset_epoch"]))
        self.metrics = self.files.metrics_before(self.epoch)  # the lines of epochs to redo are dropped
        ckpt_io.restore_rng(ckpt)

    def _check_recipe(self, ckpt: ckpt_io.Checkpoint, path: Path, force: bool) -> None:
        """Refuse a checkpoint trained with another recipe (RESUMABLE_KEYS aside) unless ``force``."""
        old = parse_stored_recipe(ckpt.recipe_yaml, f"{path} (stored recipe)")  # the limits of a recipe file
        diffs = recipe_differences(old, self.recipe.resolved)
        if diffs and not force:
            raise CheckpointError(
                f"the recipe differs from the one checkpoint '{path}' was trained with:\n  "
                + "\n  ".join(diffs) + "\nResume with the same recipe, or pass --force to continue anyway.")

    def close(self) -> None:
        """Close the loggers and leave the process group (data-parallel runs)."""
        self.loggers.close()
        distributed.shutdown(self.dist)
