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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain import build
from advtrain.config.read import parse_stored_recipe
from advtrain.config.recipe import Recipe
from advtrain.errors import DivergenceError, UserError
from advtrain.eval.robust import EvalResult, evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.checkpoint import RESUMABLE_KEYS, recipe_differences
from advtrain.io.run_files import RunFiles
from advtrain.io.run_folder import RunFolder, new_run_id
from advtrain.io.run_records import MetricsLine
from advtrain.io.run_state import RunState
from advtrain.objectives import weighted_mean
from advtrain.reports.loggers import Loggers
from advtrain.reports.run import RunResult
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
from advtrain.train.budget import coreset_size_bounds
from advtrain.train.compiled import CompiledModel, compile_message, mark_step_begin
from advtrain.train.folded import AttackModel, setup_attack_model
from advtrain.train.phase_clock import PhaseClock
from advtrain.train.progress import EpochProgress
from advtrain.train.step_monitor import FiniteState, StepMonitor, StepTotals, grads_finite
from advtrain.train.stops import TrainingInterrupted
from advtrain.ui.console import Reporter

__all__ = ["RESUMABLE_KEYS", "RunResult", "Trainer", "TrainingInterrupted", "epoch_phase", "recipe_differences",
           "selection_due"]


def epoch_phase(schedule: Any, epoch: int, selects: bool) -> str:
    """``full`` (warm start, or a selector that keeps everything), ``skip`` (reference variant) or ``coreset``."""
    if not selects or epoch < schedule.warm_start_epochs:
        return "full"
    if epoch < schedule.warm_start_epochs + schedule.skip_epochs:
        return "skip"
    return "coreset"


def selection_due(schedule: Any, epoch: int, coreset: Coreset | None) -> bool:
    """Select at the first coreset epoch and every ``select_every`` epochs after it."""
    first = schedule.warm_start_epochs + schedule.skip_epochs
    return coreset is None or (epoch - first) % schedule.select_every == 0


class Trainer:
    """Holds the built components of one run and where it stands; :meth:`fit` is the readable loop.

    Three kinds of attribute: the run's setting (recipe, device, precision, process group), its
    built components (``parts``, with the model the step calls, the one its attacks run on and the
    gradient scaler), and its state: :attr:`state` (what a checkpoint saves), :attr:`metrics` (the
    lines of ``metrics.jsonl``) and the phase the run is in.
    """

    def __init__(self, recipe: Recipe, reporter: Reporter, *, device: str | None = None,
                 resuming: bool = False) -> None:
        self.recipe = recipe
        self.reporter = reporter
        self.dist = distributed.context_from_env()
        self.device = distributed.init(self.dist, pick_device(device or recipe.device))
        self.amp_dtype = resolve_precision(recipe.precision, self.device)
        seed_everything(recipe.seed)
        self.parts = build.build_run(recipe, self.device, initial_weights=not resuming)  # resume: the checkpoint's
        enable_cuda_autotuning(self.device)
        self.train_model = self._setup_train_model()
        self.attack_model = self._setup_attack_model()
        # Only fp16 needs loss scaling; a disabled scaler passes every call through, so the step never branches.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.files = RunFiles(Path(recipe.output.dir), writes=self.dist.is_main)  # rank 0 alone writes
        self.stop = StopRequest(self.reporter.message)
        self.state = RunState()
        self.metrics: list[MetricsLine] = []
        self.stopped_early = False
        self.phase = "setup"  # setup | training | testing | reporting (for the interruption message)
        self.loggers = Loggers([])  # the log section's, once the run folder is set up

    # The components the loop reads most, by name.
    model = property(lambda self: self.parts.model)
    data = property(lambda self: self.parts.data)
    optimizer = property(lambda self: self.parts.optimizer)
    objective = property(lambda self: self.parts.objective)
    eval_attacks = property(lambda self: self.parts.eval_attacks)
    out_dir = property(lambda self: self.files.path)

    @property
    def probe_best(self) -> float | None:
        """The best overfitting-guard probe so far (from the metrics lines: a resumed run keeps it)."""
        probes = [m.overfit_probe_pgd5 for m in self.metrics if m.overfit_probe_pgd5 is not None]
        return max(probes, default=None)

    def _setup_train_model(self) -> nn.Module:
        """The model the training step calls: DDP-wrapped when data parallel, compiled per ``train.compile``."""
        train_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(self.model, device_ids=ids)
        train = self.recipe.train
        message = compile_message(train.compile, self.device, train.compile_mode)
        if message is None:
            return train_model
        self.reporter.message(message)
        return CompiledModel(train_model, lambda text: self.reporter.message(text, style="yellow"),
                             mode=train.compile_mode)

    def _setup_attack_model(self) -> AttackModel:
        """What the training and selection attacks run on: the model or its folded view (``train.fold_bn``)."""
        attack_model = setup_attack_model(self.model, self.objective, self.recipe.train.fold_bn, self.device,
                                          compile_setting=self.recipe.train.compile,
                                          image_shape=self.data.image_shape,
                                          on_compile_fallback=lambda text: self.reporter.message(text, style="yellow"))
        if attack_model.message is not None:
            self.reporter.message(attack_model.message, style="yellow" if attack_model.fell_back else None)
        return attack_model

    # ------------------------------------------------------------------ loop
    def fit(self, folder: RunFolder | None, *, resume: Path | None = None, force: bool = False) -> RunResult:
        """Train to ``schedule.epochs`` (continuing checkpoint ``resume``) in the claimed run ``folder``.

        The caller claims ``folder`` once, before building anything (``advtrain run`` does it in
        :func:`advtrain.commands.train.run_training`); ranks other than 0 pass None. Resuming a run
        that already finished and wrote its report changes nothing.
        """
        start = time.perf_counter()
        if not self._setup_run(folder, resume, force):
            return RunResult(self.out_dir, 0, time.perf_counter() - start, {}, None, self.state.best_metric,
                             self.state.best_epoch, self.metrics, finished_before=True)
        schedule, first_epoch = self.recipe.schedule, self.state.epoch
        clock = PhaseClock.for_device(self.device)  # where each epoch's wall time goes (metrics line: timing)
        with self._epoch_loop(first_epoch):
            for epoch in range(first_epoch, schedule.epochs):
                self.state.epoch = epoch
                phase = epoch_phase(schedule, epoch, self.parts.selector.selects)
                progress = self._resumed_epoch() or self._maybe_select(epoch, phase, clock)
                with clock.phase("train"):
                    record = self._train(epoch, phase, progress)
                collapsed = self._evaluate(epoch, phase, record, clock)
                if not self._save(epoch, record, collapsed, clock):
                    break
        return self._finish(start, first_epoch)

    def _setup_run(self, folder: RunFolder | None, resume: Path | None, force: bool) -> bool:
        """Continue ``resume`` (or start a new run id) and record the run; False: it had already finished."""
        if folder is None and self.dist.is_main:
            raise ValueError("Trainer.fit needs the claimed run folder: RunFolder.claim(output.dir, ...)")
        self.phase = "training"
        if resume is not None:
            self.load(resume, force=force, folder=folder)
            if self.state.epoch >= self.recipe.schedule.epochs and self.state.in_epoch is None \
                    and folder is not None and folder.is_finished():
                self.reporter.message(f"run {self.recipe.name} already finished all {self.recipe.schedule.epochs} "
                                      f"epochs and wrote its report; nothing to do (its files are unchanged)")
                return False
            self.reporter.message(f"resumed from {resume} at epoch {self.state.epoch + 1}")
        else:
            self.state.run_id = new_run_id()
        if folder is not None:
            folder.record_run_id(self.state.run_id)
            self.files.write_recipe(self.recipe.to_yaml())
        self.loggers = Loggers.build(self.recipe.log, self.out_dir, first_epoch=self.state.epoch,
                                     writes=self.dist.is_main)
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
        progress, self.state.in_epoch = self.state.in_epoch, None
        return progress

    def _maybe_select(self, epoch: int, phase: str, clock: PhaseClock) -> EpochProgress:
        """Seed a fresh epoch, then select a coreset when one is due; the epoch starts at batch 0."""
        rank = (self.dist.rank,) if self.dist.enabled else ()  # own attack starts per rank
        torch.manual_seed(derive_seed(self.recipe.seed, "epoch", epoch, *rank))
        due = phase == "coreset" and selection_due(self.recipe.schedule, epoch, self.state.coreset)
        if not due:
            return EpochProgress(epoch)
        with clock.phase("selection"):
            return EpochProgress(epoch, selection=self.select(epoch, clock))

    def _train(self, epoch: int, phase: str, progress: EpochProgress) -> MetricsLine:
        """Train the epoch (a ``skip`` epoch only advances the step count); its metrics line so far."""
        record = MetricsLine(epoch, phase, selection=progress.selection)
        if phase == "skip":
            self.state.step += self._batches_per_epoch(len(self.data.train))
        else:
            warm = getattr(self.train_model, "warmup_s", 0.0)  # None until a compiled model's first call
            train_start = time.perf_counter()
            stats = self.train_epoch(epoch, phase, progress)
            record.train_time = time.perf_counter() - train_start
            record.train_loss, record.train_acc = stats["train_loss"], stats["train_acc"]
            record.samples = stats["samples"]
            if warm is None:
                record.compile_warmup_s = self.train_model.warmup_s
        record.lr = self.optimizer.param_groups[0]["lr"]
        record.coreset_size = None if phase != "coreset" else len(self.state.coreset)
        return record

    def _evaluate(self, epoch: int, phase: str, record: MetricsLine, clock: PhaseClock) -> bool:
        """Validate when due (tracking the best model), then the overfitting guard; True: training collapsed."""
        if self._eval_due(epoch) and self.dist.is_main:
            with clock.phase("eval"):
                eval_start = time.perf_counter()
                result = self.validate()
                record.eval_time = time.perf_counter() - eval_start
            record.val = result.summary()
            self._track_best(result.headline, epoch)
        guarding = self.recipe.train.overfit_guard and phase != "skip"
        with clock.phase("guard") if guarding else nullcontext():
            return self._overfit_guard(phase, record)

    def _save(self, epoch: int, record: MetricsLine, collapsed: bool, clock: PhaseClock) -> bool:
        """Log the epoch and save its checkpoints; False: the overfitting guard stopped the run.

        The epoch's line is written before its checkpoints (a crash between them redoes the epoch
        from the previous checkpoint), then rewritten with the time the writes took.
        """
        self.metrics.append(record)
        with clock.phase("log"):
            self.files.append_metrics(record.timed(clock.split()).to_json())
        if not collapsed:
            self.state.epoch = epoch + 1  # this epoch is done: a resume starts the next one
            with clock.phase("save"):
                self._save_checkpoints(epoch)
        with clock.phase("log"):  # metrics.csv / TensorBoard when the log section asks
            self.loggers.log_epoch(record.timed(clock.split()).to_json(), [m.to_json() for m in self.metrics])
        # The laps join up: this rewrite and the screen line below count in the next epoch's `other`.
        self.files.append_metrics(record.timed(clock.lap()).to_json(), replace_last=True)
        if collapsed:
            self._revert_after_collapse(epoch, record)
            return False
        self.reporter.epoch_end(epoch, record.to_json())
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
        last_val = next((m.val for m in reversed(self.metrics) if m.val), {})
        epochs_run = sum(1 for m in self.metrics if m.epoch >= first_epoch)
        return RunResult(self.out_dir, epochs_run, time.perf_counter() - start, last_val, test,
                         self.state.best_metric, self.state.best_epoch, self.metrics, compile=self._compile_info())

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
        coreset = self.state.coreset
        weights = torch.zeros(n_train)
        weights[coreset.indices] = coreset.weights.float().cpu()
        return coreset.indices, weights.to(self.device)

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
        mark_step_begin(self.train_model)  # CUDA graphs: every backward of the last step has run
        factor = self.parts.lr_factor(epoch + b / batches, self.recipe.schedule.epochs)
        for group, base in zip(self.optimizer.param_groups, self.parts.base_lrs, strict=True):
            group["lr"] = base * factor
        try:
            attack_model = self.attack_model.refreshed()  # the live weights of this step
            with autocast(self.device, self.amp_dtype):
                out = self.objective.loss(self.train_model, x, y, attack_model=attack_model)
            batch_weights = None if weights_dev is None else weights_dev[idx.to(self.device, non_blocking=True)]
            loss, loss_value, correct, count, stop = self._step_loss(out.losses.float(), out.logits, y, batch_weights)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clipping sees true gradients
        except CUDA_OUT_OF_MEMORY:
            raise UserError(stops.oom_message(epoch, b, self.data.batch_size, self.files.last)) from None
        # fp16: the gradient scaler skips steps with inf/NaN gradients and lowers its scale itself.
        monitor.record(b, loss_value, correct, count, None if self.scaler.is_enabled() else grads_finite(self.model),
                       stop)
        if self.recipe.train.grad_clip_value is not None:
            nn.utils.clip_grad_value_(self.model.parameters(), self.recipe.train.grad_clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1

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
        return FiniteState.take(self.model, self.optimizer, self.device, progress=progress, step=self.state.step)

    def _diverged(self, totals: StepTotals, bad_batch: int, finite: FiniteState) -> None:
        """Roll back to the last finite state of this epoch, save it, and stop with a hint."""
        finite.restore(self.model, self.optimizer, self.device)
        self.state.step = finite.step
        at = finite.progress
        saved = self._save_in_epoch(at) if finite.is_finite() else None
        kept = stops.rollback_kept(saved, at.batch, self.files.last)
        raise DivergenceError(stops.divergence_message(at.epoch, bad_batch, totals.bad_kind, kept))

    def _save_in_epoch(self, progress: EpochProgress) -> Path:
        """Save mid-epoch: a resume continues right after ``progress.batch`` batches of ``progress.epoch``."""
        path = self.files.save_checkpoint(self.snapshot(replace(self.state, epoch=progress.epoch, in_epoch=progress)),
                                          "last")
        distributed.barrier(self.dist)
        return path

    def _overfit_guard(self, phase: str, record: MetricsLine) -> bool:
        """The catastrophic-overfitting probe after a trained epoch; rank 0 decides for every rank."""
        collapsed = False
        if self.recipe.train.overfit_guard and phase != "skip" and self.dist.is_main:
            attack = self.recipe.components["attack"]
            probe = overfit.check_overfit(self.model, self.data.train, attack.params if attack else None,
                                          batch_size=self.data.batch_size, num_classes=self.data.num_classes,
                                          device=self.device, best=self.probe_best,
                                          drop=self.recipe.train.overfit_drop)
            record.overfit_probe_pgd5 = probe.accuracy
            collapsed = probe.collapsed
        return distributed.rank0_flag(self.dist, collapsed, self.device)

    def _revert_after_collapse(self, epoch: int, record: MetricsLine) -> None:
        """Stop after a collapse with the previous epoch's model (``last.safetensors``) back in place."""
        self.reporter.epoch_end(epoch, record.to_json())
        if self.dist.is_main:
            self.reporter.message(overfit.collapse_message(epoch, self.probe_best, record.overfit_probe_pgd5,
                                                           self.files.last), style="red")
        self.stopped_early = True
        if self.files.last.exists():
            ckpt_io.load_model_weights(ckpt_io.load(self.files.last), self.model)

    def _compile_info(self) -> dict[str, Any] | None:
        """What ``train.compile`` did (None: the model trained eagerly, as asked or as auto decided)."""
        if not isinstance(self.train_model, CompiledModel):
            return None
        model = self.train_model
        return {"setting": self.recipe.train.compile, "mode": model.mode, "compiled": model.fallback is None,
                "warmup_s": model.warmup_s, "fallback": model.fallback}

    # ------------------------------------------------------------ selection
    def select(self, epoch: int, clock: PhaseClock | None = None) -> dict[str, float]:
        """Attack the whole training set, take last-layer gradients, solve for the coreset (written to the run
        folder, its time charged to ``clock``'s ``save``)."""
        from advtrain.selection.full_pass import select_coreset

        # The selection pass draws its own attack starts, so training randomness is the same
        # whether or not an epoch selects (and a resumed run replays it exactly).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(self.recipe.seed, "select-attack", epoch))
            coreset, timing = select_coreset(self.model, self.parts.selection_objective, self.parts.selector, self.data,
                                             seed=self.recipe.seed, epoch=epoch, device=self.device,
                                             amp_dtype=self.amp_dtype, ctx=self.dist,
                                             progress=self._selection_progress(epoch),
                                             attack_model=self.attack_model.refreshed())
        self.state.coreset = coreset
        with clock.phase("save") if clock is not None else nullcontext():
            self.files.write_coreset(epoch, indices=coreset.indices, weights=coreset.weights, labels=coreset.labels)
        info = timing.record(len(coreset))
        self.reporter.message(
            f"selected {info['size']} of {len(self.data.train)} samples with {self.recipe.components['selector'].name} "
            f"at epoch "
            f"{epoch + 1}: attack {timing.attack_s:.1f}s, features {timing.features_s:.1f}s, "
            f"solver {timing.solver_s:.2f}s")
        return info

    def _selection_progress(self, epoch: int) -> Callable[[str, int, int], None]:
        """Show the selection pass, and stop it between its batches on a stop request.

        Stopping keeps the end-of-epoch checkpoint before the pass; a resume redoes the selection
        exactly (its randomness comes from ``(seed, epoch)``). Data parallel: the ranks agree once,
        before the solver, where every rank arrives (their shards may differ in batches).
        """
        def progress(stage: str, done: int, total: int) -> None:
            self.reporter.selection(epoch, stage, done, total)
            if self.dist.enabled:
                stop = stage == "solver" and done == 0 and distributed.any_rank(self.dist, self.stop.requested,
                                                                                 self.device)
            else:
                stop = self.stop.requested
            if stop:
                raise TrainingInterrupted(stops.selection_interrupt_message(
                    self.stop.name, self.files.last, epoch=epoch, stage=stage, done=done, total=total))

        return progress

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

    def _track_best(self, metric: float, epoch: int) -> None:
        self.state.improved(metric, epoch)

    # ------------------------------------------------------------- state
    def snapshot(self, run: RunState | None = None) -> ckpt_io.TrainingState:
        """What a checkpoint saves: ``run`` (default: the run's state) with the model, optimizer and scaler."""
        return ckpt_io.TrainingState(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), recipe_yaml=self.recipe.to_yaml(),
            model_name=self.model.model_name, num_classes=self.data.num_classes, in_chans=self.data.image_shape[0],
            run=run or self.state, scaler=self.scaler.state_dict())

    def _save_checkpoints(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        state = self.snapshot()
        self.files.save_checkpoint(state, "last")
        if self.state.best_epoch == epoch:  # this epoch's validation set a new best
            self.files.save_checkpoint(state, "best")
        keep = self.recipe.output.keep_every
        if keep and (epoch + 1) % keep == 0:
            self.files.save_checkpoint(state, "epoch", epoch=epoch + 1)

    def load(self, path: Path, *, force: bool, folder: RunFolder | None = None) -> None:
        """Continue from a checkpoint of this same recipe (:func:`advtrain.io.checkpoint.resume` checks it).

        Everything is checked before the run folder changes: the checkpoint itself, that it belongs
        to the run in ``folder``, then (in :func:`~advtrain.io.checkpoint.resume`) the model, the
        recipe, the optimizer and the coreset.
        """
        ckpt = ckpt_io.load(path)
        theirs = ckpt.meta.get("run_id")
        run_id = theirs if folder is None else folder.resume_run_id(theirs, path)
        selector = self.recipe.components["selector"]
        sizes = coreset_size_bounds(selector.params, self.data.train.labels, self.data.batch_size)
        # the stored recipe within the limits of a recipe file, before any other check reads it
        stored = parse_stored_recipe(ckpt.recipe_yaml, f"{path} (stored recipe)")
        self.state = ckpt_io.resume(ckpt, stored_recipe=stored, model=self.model, optimizer=self.optimizer,
                                    optimizer_name=self.recipe.components["optim"].name, scaler=self.scaler,
                                    recipe=self.recipe.resolved, n_train=len(self.data.train),
                                    coreset_sizes=sizes, force=force)
        self.state.run_id = run_id
        # the lines of epochs to redo are dropped
        self.metrics = [MetricsLine.from_json(m) for m in self.files.metrics_before(self.state.epoch)]

    def close(self) -> None:
        """Close the loggers and leave the process group (data-parallel runs)."""
        self.loggers.close()
        distributed.shutdown(self.dist)
