"""The training loop: setup → for epoch: maybe select → train → evaluate → save.

Randomness is re-derived from ``(seed, epoch)`` at the start of every epoch (global RNGs for
attack starts and dropout, an explicit generator for data order and augmentation). Resuming from
the end of epoch ``e`` therefore replays epoch ``e+1`` exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from advtrain import build
from advtrain.config.load import Recipe
from advtrain.errors import CheckpointError, DivergenceError, UserError
from advtrain.eval.robust import EvalResult, evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.run_folder import RunFolder, new_run_id
from advtrain.objectives import weighted_mean
from advtrain.runtime import distributed
from advtrain.runtime.device import (
    CUDA_OUT_OF_MEMORY,
    autocast,
    enable_cuda_autotuning,
    keeps_data_on_device,
    pick_device,
    prefers_channels_last,
    resolve_precision,
)
from advtrain.runtime.seeding import derive_seed, generator, seed_everything
from advtrain.selection import Coreset
from advtrain.train.step_monitor import FiniteState, StepMonitor, StepTotals, grads_finite
from advtrain.ui.console import Reporter

#: Recipe keys that may change between a checkpoint and a resumed run.
RESUMABLE_KEYS = ("name", "device", "output", "eval")


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a step; a resumable checkpoint was written."""


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


def check_output_dir(out_dir: Path, resuming: bool, overwrite: bool) -> RunFolder:
    """Claim (lock) the run folder for this process; see :class:`~advtrain.io.run_folder.RunFolder`."""
    return RunFolder.claim(out_dir, resuming=resuming, overwrite=overwrite)


class Trainer:
    """Holds the built components of one run; :meth:`fit` is the readable loop."""

    def __init__(self, recipe: Recipe, reporter: Reporter, *, device: str | None = None) -> None:
        self.recipe = recipe
        self.reporter = reporter
        self.dist = distributed.context_from_env()
        self.device = distributed.init(self.dist, pick_device(device or recipe.device))
        self.amp_dtype = resolve_precision(recipe.precision, self.device)
        seed_everything(recipe.seed)
        self.data = build.build_data(recipe)
        build.check_selector_fits(recipe, self.data)
        if keeps_data_on_device(self.device, recipe.train.data_on_device):
            self.data = build.move_data_to_device(self.data, self.device)
        self.model = build.build_model_for(recipe, self.data).to(self.device)
        if prefers_channels_last(self.device, recipe.train.channels_last):
            self.model = self.model.to(memory_format=torch.channels_last)
        enable_cuda_autotuning(self.device)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if recipe.train.compile:
            self.train_model = torch.compile(self.train_model)
        self.objective = build.build_objective(recipe)
        self.selection_objective = build.build_selection_objective(recipe, self.objective)
        self.optimizer = build.build_optimizer(recipe, self.model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.lr_factor = build.build_lr_schedule(recipe)
        self.eval_attacks = build.build_eval_attacks(recipe.eval.attacks, eps=recipe.eval.eps,
                                                      alpha=recipe.eval.alpha)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.out_dir = Path(recipe.output.dir)
        self.epoch = 0
        self.step = 0
        self.coreset: Coreset | None = None
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.metrics: list[dict[str, Any]] = []
        self.stopped_early = False
        self.resume_batch = 0  # batches of self.epoch already trained (mid-epoch resume)
        self.partial: dict[str, Any] = {}  # running sums of an interrupted epoch
        self._stop_signal: int | None = None
        self._stop_any = False
        self.run_id: str | None = None  # recorded in the run folder and in every checkpoint
        self.phase = "setup"  # setup | training | testing (for the interruption message)

    # ----------------------------------------------------------------- state
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

    def _save_in_epoch(self, epoch: int, batch: int, partial: dict[str, Any]) -> Path:
        """Save mid-epoch: ``batch`` batches of ``epoch`` done; resume continues right after them."""
        state = self.state()
        state.epoch = epoch - 1  # the last *completed* epoch
        state.extra = {"in_epoch": {"epoch": epoch, "batch": batch, "partial": partial}}
        path = self.out_dir / "last.safetensors"
        if self.dist.is_main:
            ckpt_io.save(path, state, kind="last")
        distributed.barrier(self.dist)
        return path

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
        try:
            old = yaml.safe_load(ckpt.recipe_yaml) or {}
        except yaml.YAMLError:
            raise CheckpointError(f"checkpoint '{path}': its stored recipe is not valid YAML.") from None
        if not isinstance(old, dict):
            raise CheckpointError(f"checkpoint '{path}': its stored recipe is not a mapping.")
        diffs = recipe_differences(old, self.recipe.resolved)
        if diffs and not force:
            raise CheckpointError(
                f"the recipe differs from the one checkpoint '{path}' was trained with:\n  "
                + "\n  ".join(diffs) + "\nResume with the same recipe, or pass --force to continue anyway.")
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
        in_epoch = (meta.get("extra") or {}).get("in_epoch")
        if in_epoch:
            self.epoch, self.resume_batch = int(in_epoch["epoch"]), int(in_epoch["batch"])
            self.partial = dict(in_epoch.get("partial") or {})
        self.best_metric, self.best_epoch = meta.get("best_metric"), meta.get("best_epoch")
        if "coreset.indices" in ckpt.tensors:
            self.coreset = Coreset(ckpt.tensors["coreset.indices"], ckpt.tensors["coreset.weights"],
                                   int(meta["coreset_epoch"]))
        metrics_path = self.out_dir / "metrics.jsonl"
        if metrics_path.exists():  # drop lines of epochs that will be redone
            kept = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            self.metrics = [m for m in kept if m["epoch"] < self.epoch]
            if len(self.metrics) < len(kept):
                metrics_path.write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        ckpt_io.restore_rng(ckpt)

    # ------------------------------------------------------------------ loop
    def fit(self, *, resume: Path | None = None, force: bool = False, overwrite: bool = False,
            folder: RunFolder | None = None) -> RunResult:
        """Train to ``schedule.epochs`` (continuing ``resume``) in the claimed run ``folder``.

        Without ``folder`` the main process claims (locks) ``output.dir`` itself and releases it on
        return. Resuming a run that already finished and wrote its report changes nothing.
        """
        owned = folder is None and self.dist.is_main
        if owned:
            folder = check_output_dir(self.out_dir, resume is not None, overwrite)
        try:
            return self._fit(resume, force, folder)
        finally:
            if owned and folder is not None:
                folder.release()

    def _fit(self, resume: Path | None, force: bool, folder: RunFolder | None) -> RunResult:
        start = time.perf_counter()
        self.phase = "training"
        if resume is not None:
            self.load(resume, force=force, folder=folder)
            if self.epoch >= self.recipe.schedule.epochs and self.resume_batch == 0 and folder is not None \
                    and folder.is_finished():
                self.reporter.message(f"run {self.recipe.name} already finished all {self.recipe.schedule.epochs} "
                                      f"epochs and wrote its report; nothing to do (its files are unchanged)")
                return RunResult(self.out_dir, 0, time.perf_counter() - start, {}, None, self.best_metric,
                                 self.best_epoch, self.metrics, finished_before=True)
            self.reporter.message(f"resumed from {resume} at epoch {self.epoch + 1}")
        else:
            self.run_id = new_run_id()
        if folder is not None:
            folder.record_run_id(self.run_id)
            (self.out_dir / "recipe.yaml").write_text(self.recipe.to_yaml())
        schedule = self.recipe.schedule
        selector_name = self.recipe.components["selector"].name
        first_epoch = self.epoch
        last_val: dict[str, float] = next((m["val"] for m in reversed(self.metrics) if m.get("val")), {})
        self.reporter.start(schedule.epochs, first_epoch)
        previous_handlers = self._install_signal_handlers()
        try:
            for epoch in range(first_epoch, schedule.epochs):
                self.epoch = epoch
                epoch_start = time.perf_counter()
                mid_epoch = epoch == first_epoch and self.resume_batch > 0
                if not mid_epoch:  # a mid-epoch resume restored the RNG state of the interruption
                    rank = (self.dist.rank,) if self.dist.enabled else ()  # own attack starts per rank
                    torch.manual_seed(derive_seed(self.recipe.seed, "epoch", epoch, *rank))
                phase = epoch_phase(schedule, epoch, selector_name)
                selection = self.partial.get("selection") if mid_epoch else None
                if phase == "coreset" and not mid_epoch and selection_due(schedule, epoch, self.coreset):
                    selection = self.select(epoch)
                record: dict[str, Any] = {"epoch": epoch, "phase": phase}
                if phase == "skip":
                    record.update(train_loss=float("nan"), train_acc=float("nan"), samples=0)
                    self.step += self._batches_per_epoch(len(self.data.train))
                else:
                    start_batch, partial = (self.resume_batch, self.partial) if mid_epoch else (0, {})
                    train_start = time.perf_counter()
                    record.update(self.train_epoch(epoch, phase, start_batch=start_batch,
                                                   partial={**partial, "selection": selection}))
                    record["train_time"] = time.perf_counter() - train_start
                record["lr"] = self.optimizer.param_groups[0]["lr"]
                record["coreset_size"] = None if phase != "coreset" else int(len(self.coreset.indices))
                record["selection"] = selection
                if self._eval_due(epoch) and self.dist.is_main:
                    eval_start = time.perf_counter()
                    last_val = self.validate().summary()
                    record["eval_time"] = time.perf_counter() - eval_start
                    record["val"] = last_val
                    self._track_best(last_val, epoch)
                collapsed = self._overfit_check(record) if phase != "skip" and self.dist.is_main else False
                if self.dist.enabled:  # every rank stops together
                    flag = torch.tensor([float(collapsed)], device=self.device)
                    collapsed = bool(distributed.broadcast_tensor(self.dist, flag, dtype=torch.float32,
                                                                  device=self.device)[0] > 0)
                record["epoch_time"] = time.perf_counter() - epoch_start
                self._write_metrics(record)
                if collapsed:
                    self._revert_after_collapse(epoch, record)
                    break
                self._save_checkpoints(epoch, record)
                self.reporter.epoch_end(epoch, record)
                if self._stop_everywhere():  # a signal arrived outside a training step: the epoch is saved
                    raise TrainingInterrupted(self._interrupt_message(epoch + 1, None))
        finally:
            self.reporter.stop()
            self._restore_signal_handlers(previous_handlers)
        test = None
        self.phase = "testing"
        if self.recipe.eval.n_examples > 0 and len(self.data.test) > 0 and self.dist.is_main:
            test = self.evaluate_split(self.data.test)
        self.phase = "reporting"
        epochs_run = sum(1 for m in self.metrics if m["epoch"] >= first_epoch)
        return RunResult(self.out_dir, epochs_run, time.perf_counter() - start,
                         last_val, test, self.best_metric, self.best_epoch, self.metrics)

    def _batches_per_epoch(self, n: int) -> int:
        batches = math.ceil(n / self.data.batch_size)
        cap = self.recipe.train.max_steps_per_epoch
        return min(batches, cap) if cap else batches

    def train_epoch(self, epoch: int, phase: str, *, start_batch: int = 0,
                    partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """One pass over the full training set or the coreset, with per-sample weights.

        ``start_batch`` > 0 continues an interrupted epoch: the first batches are drawn again (so
        the data order and augmentation generator advance exactly as before) but not trained on.
        Statistics stay on the device and are read every ``train.log_every`` batches
        (:mod:`advtrain.train.step_monitor`), where divergence and DDP stop requests are acted on.
        """
        from advtrain.data import iterate_batches

        n_train = len(self.data.train)
        if phase == "coreset":
            indices = self.coreset.indices
            weights = torch.zeros(n_train)
            weights[self.coreset.indices] = self.coreset.weights.float().cpu()
        else:
            indices, weights = torch.arange(n_train), None
        weights_dev = weights.to(self.device) if weights is not None else None
        batches = self._batches_per_epoch(len(indices))
        gen = generator(derive_seed(self.recipe.seed, "data", epoch))
        self.reporter.epoch_start(epoch, batches, phase)
        self.train_model.train()
        partial = partial or {}
        selection = partial.get("selection")
        monitor = StepMonitor(self.device, partial)
        finite = self._finite_state(start_batch, partial)
        log_every = self.recipe.train.log_every
        for b, (x, y, idx) in enumerate(iterate_batches(
                self.data.train, indices, self.data.batch_size, shuffle=True, generator=gen,
                augment=self.data.augment, padding=self.data.padding, device=self.device,
                num_workers=self.data.num_workers, shard=(self.dist.rank, self.dist.world))):
            if b >= batches:
                break
            if b < start_batch:  # trained before the interruption
                continue
            self._train_step(epoch, b, batches, x, y, idx, weights_dev, monitor)
            done = b + 1
            # One process stops after the step a signal interrupted; data-parallel ranks stop together
            # at the first read after the request reached every rank through the step's all-reduce.
            stop_here = self._stop_signal is not None and not self.dist.enabled
            if done % log_every == 0 or done == batches or stop_here:
                totals = monitor.read()  # the one host sync of this window
                if totals.first_bad_batch is not None:
                    self._diverged(epoch, totals, finite, selection)
                self.reporter.progress(done, totals.loss_sum / max(totals.seen, 1),
                                       totals.correct / max(totals.seen, 1))
                if stop_here or totals.stop:
                    self._stop_any = True
                    path = self._save_in_epoch(epoch, done, {**totals.partial(), "selection": selection})
                    raise TrainingInterrupted(self._interrupt_message(epoch, done, path))
                if done < batches:
                    finite = self._finite_state(done, totals.partial())
        totals = monitor.read()
        return {"train_loss": totals.loss_sum / max(totals.seen, 1), "train_acc": totals.correct / max(totals.seen, 1),
                "samples": int(totals.seen)}

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
            correct = (out.logits.detach().argmax(1) == y).sum()
            loss, loss_value, correct, count, stop = self._global_loss(out.losses.float(), batch_weights,
                                                                       correct, len(y))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        except CUDA_OUT_OF_MEMORY:
            raise UserError(self._oom_message(epoch, b)) from None
        # fp16: the gradient scaler skips steps with inf/NaN gradients and lowers its scale itself.
        finite = grads_finite(self.model) if self.scaler is None else None
        monitor.record(b, loss_value, correct, count, finite, stop)
        if self.recipe.train.grad_clip_value is not None:
            nn.utils.clip_grad_value_(self.model.parameters(), self.recipe.train.grad_clip_value)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1

    def _finite_state(self, batch: int, partial: dict[str, Any]) -> FiniteState:
        return FiniteState.take(self.model, self.optimizer, self.device, batch=batch, step=self.step,
                                partial={k: v for k, v in partial.items() if k != "selection"})

    def _global_loss(self, losses: Tensor, weights: Tensor | None, correct: Tensor,
                     count: int) -> tuple[Tensor, Tensor, Tensor, Tensor | int, Tensor | None]:
        """The loss to back-propagate plus the batch's (global) loss value, correct count, size, stop flag.

        All device tensors (nothing is read back). Data parallel: each rank holds a slice of the
        global batch; scaling the local Σγℓ by world/Σ_global γ makes DDP's gradient average equal
        the gradient of Σγℓ/Σγ over the whole global batch. One all-reduce per step also carries
        the stop request and the statistics.
        """
        if not self.dist.enabled:
            loss = weighted_mean(losses, weights)
            return loss, loss.detach(), correct, count, None
        w = torch.ones_like(losses) if weights is None else weights.to(losses.dtype)
        local = (w * losses).sum()
        flags = torch.tensor([float(count), float(self._stop_signal is not None)]).to(losses.device, non_blocking=True)
        stats = torch.cat([torch.stack([w.sum().detach(), local.detach(), correct.float()]), flags])
        distributed.all_reduce_sum(self.dist, stats)
        loss = local * self.dist.world / stats[0]
        return loss, stats[1] / stats[0], stats[2], stats[3], stats[4]

    def _stop_everywhere(self) -> bool:
        """Did any rank get SIGINT/SIGTERM? (one all-reduce when data parallel)."""
        flag = torch.tensor([float(self._stop_signal is not None or self._stop_any)], device=self.device)
        return bool(distributed.all_reduce_sum(self.dist, flag)[0] > 0)

    def _diverged(self, epoch: int, totals: StepTotals, finite: FiniteState, selection: Any) -> None:
        """Roll back to the last finite state of this epoch, save it, and stop with a hint."""
        finite.restore(self.model, self.optimizer, self.device)
        self.step = finite.step
        bad = totals.first_bad_batch if totals.first_bad_batch is not None else finite.batch
        if finite.is_finite():
            path = self._save_in_epoch(epoch, finite.batch, {**finite.partial, "selection": selection})
            kept = f"the state before batch {finite.batch + 1} is saved in {path}"
        else:
            last = self.out_dir / "last.safetensors"
            kept = (f"the weights already overflowed, so {last} (the last finite checkpoint) is kept"
                    if last.exists() else "no finite checkpoint was written yet")
        raise DivergenceError(
            f"non-finite {totals.bad_kind or 'loss'} at epoch {epoch + 1}, batch {bad + 1}; {kept}. Try a lower "
            f"optim.lr, precision=fp32, or train.grad_clip_value; continue with --resume --force after changing "
            f"the recipe.")

    def _oom_message(self, epoch: int, batch: int) -> str:
        last = self.out_dir / "last.safetensors"
        kept = f"{last} (end of the last completed epoch) is kept" if last.exists() else "no checkpoint yet"
        return (f"CUDA ran out of memory at epoch {epoch + 1}, batch {batch + 1} (adversarial training keeps the "
                f"attack's activations too). Use a smaller data.batch_size (now {self.data.batch_size}) or "
                f"precision=bf16; {kept}.")

    def _interrupt_message(self, epoch: int, batch: int | None, path: Path | None = None) -> str:
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "signal"
        where = f"after batch {batch} of epoch {epoch + 1}" if batch is not None else f"after epoch {epoch}"
        saved = path or self.out_dir / "last.safetensors"
        return (f"stopped by {name} {where}; saved {saved}. Continue with: advtrain run <recipe> --resume "
                f"(same recipe and overrides).")

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current step, save, and stop (a second SIGINT stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.reporter.message(f"{signal.Signals(signum).name}: finishing the current step, then saving...")

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def select(self, epoch: int) -> dict[str, float]:
        """Attack the whole training set, take last-layer gradients, solve for the coreset."""
        from advtrain.selection.full_pass import select_coreset

        selector = self.recipe.components["selector"]
        # The selection pass draws its own attack starts, so training randomness is the same
        # whether or not an epoch selects (and a resumed run replays it exactly).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(self.recipe.seed, "select-attack", epoch))
            coreset, timing = select_coreset(self.model, self.selection_objective, selector, self.data,
                                             seed=self.recipe.seed, epoch=epoch, device=self.device,
                                             amp_dtype=self.amp_dtype, ctx=self.dist)
        self.coreset = coreset
        self._write_coreset(epoch)
        info = timing.record(len(coreset))
        self.reporter.message(
            f"selected {info['size']} of {len(self.data.train)} samples with {selector.name} at epoch "
            f"{epoch + 1}: attack {timing.attack_s:.1f}s, features {timing.features_s:.1f}s, "
            f"solver {timing.solver_s:.2f}s")
        return info

    def _write_coreset(self, epoch: int) -> None:
        assert self.coreset is not None
        if not self.dist.is_main:
            return
        path = self.out_dir / "coreset" / f"epoch_{epoch:03d}.npz"
        arrays = {"indices": self.coreset.indices.numpy(), "weights": self.coreset.weights.numpy(),
                  "labels": self.coreset.labels.numpy(), "epoch": np.array(epoch)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        ckpt_io.write_atomically(path, write)

    def close(self) -> None:
        """Leave the process group (data-parallel runs)."""
        distributed.shutdown(self.dist)

    # ------------------------------------------------ catastrophic overfitting
    def _overfit_check(self, record: dict[str, Any]) -> bool:
        """PGD accuracy on a fixed training batch; True when it collapsed (Wong et al. 2020)."""
        if not self.recipe.train.overfit_guard:
            return False
        from advtrain.attacks.presets import resolve_eval_attack

        attack = self.recipe.components["attack"]
        norm = getattr(attack.params, "norm", "linf") if attack else "linf"
        eps = getattr(attack.params, "eps", None) if attack else None
        probe = resolve_eval_attack("pgd5" if norm == "linf" else "pgd5-l2", eps=eps)
        n = min(len(self.data.train), self.data.batch_size)
        result = evaluate(self.model, self.data.train, [probe], n_examples=n, batch_size=n, device=self.device,
                          num_classes=self.data.num_classes)
        acc = result.attacks[0].robust_acc
        record["overfit_probe_pgd5"] = acc
        best = getattr(self, "_probe_best", None)
        self._probe_best = acc if best is None else max(best, acc)
        return best is not None and best - acc > self.recipe.train.overfit_drop

    def _revert_after_collapse(self, epoch: int, record: dict[str, Any]) -> None:
        last = self.out_dir / "last.safetensors"
        kept = f"the model of epoch {epoch} ({last}) is kept" if last.exists() else "no earlier checkpoint exists"
        self.reporter.epoch_end(epoch, record)
        self.reporter.message(
            f"catastrophic overfitting at epoch {epoch + 1}: PGD-5 accuracy on a fixed training batch "
            f"fell from {self._probe_best:.1%} to {record['overfit_probe_pgd5']:.1%}. Training stopped; {kept}. "
            f"Lower attack.alpha (e.g. 1.0·ε) or ε, or use PGD training.", style="red")
        self.stopped_early = True
        if last.exists():
            ckpt_io.load_model_weights(ckpt_io.load(last), self.model)

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

    # ---------------------------------------------------------------- output
    def _write_metrics(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if not self.dist.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _save_checkpoints(self, epoch: int, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        state = self.state()
        ckpt_io.save(self.out_dir / "last.safetensors", state, kind="last")
        if getattr(self, "_new_best", False):
            ckpt_io.save(self.out_dir / "best.safetensors", state, kind="best")
            self._new_best = False
        keep = self.recipe.output.keep_every
        if keep and (epoch + 1) % keep == 0:
            ckpt_io.save(self.out_dir / f"epoch_{epoch + 1:03d}.safetensors", state, kind="epoch")
