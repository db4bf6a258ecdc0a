"""The training loop's parts off the happy path: resume state, run-folder files, overfit guard, signals,
the data-parallel loss, and the shape of the loop itself."""

from __future__ import annotations

import ast
import inspect
import json
import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.io import checkpoint as ckpt_io
from advtrain.io.run_files import RunFiles, write_coreset_npz
from advtrain.io.run_records import MetricsLine
from advtrain.runtime import distributed
from advtrain.runtime.interrupts import StopRequest
from advtrain.train import overfit
from advtrain.train.progress import EpochProgress
from advtrain.train.step_monitor import StepMonitor


def _state(in_epoch: EpochProgress | None = None) -> ckpt_io.TrainingState:
    run = ckpt_io.RunState(epoch=1 if in_epoch is None else in_epoch.epoch, step=5, in_epoch=in_epoch)
    return ckpt_io.TrainingState(model={"w": torch.ones(3)}, optimizer=None, recipe_yaml="a: 1\n", model_name="m",
                                 num_classes=2, in_chans=1, run=run)


def _rewrite_meta(path, **changes) -> None:
    """Rewrite a checkpoint's ``advtrain`` metadata in place (an older writer's form, or a crafted one)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())
    metadata["advtrain"] = json.dumps({**json.loads(metadata["advtrain"]), **changes})
    save_file(tensors, str(path), metadata=metadata)


# ------------------------------------------------------------------------------ resume state
def test_epoch_progress_round_trips_through_a_checkpoint(tmp_path):
    selection = {"attack_s": 0.5, "features_s": 0.25, "solver_s": 0.125, "total_s": 0.875, "size": 40}
    progress = EpochProgress(epoch=3, batch=7, loss_sum=12.345678901234567, correct=40, seen=56, selection=selection)
    ckpt_io.save(tmp_path / "last.safetensors", _state(progress))
    ckpt = ckpt_io.load(tmp_path / "last.safetensors")  # the metadata validator accepts it
    assert EpochProgress.from_extra(ckpt.meta["extra"]) == progress
    # the on-disk form is the one earlier advtrain versions wrote and read
    assert ckpt.meta["extra"] == {"in_epoch": {"epoch": 3, "batch": 7, "partial": {
        "loss_sum": 12.345678901234567, "correct": 40, "seen": 56, "selection": selection}}}


def test_epoch_progress_reads_older_checkpoints(tmp_path):
    # a divergence before the first statistics read used to save only the selection
    old = {"in_epoch": {"epoch": 2, "batch": 0, "partial": {"selection": None}}}
    ckpt_io.save(tmp_path / "old.safetensors", _state())
    _rewrite_meta(tmp_path / "old.safetensors", extra=old)
    progress = EpochProgress.from_extra(ckpt_io.load(tmp_path / "old.safetensors").meta["extra"])
    assert progress == EpochProgress(epoch=2, batch=0)
    assert EpochProgress.from_extra({}) is None and EpochProgress.from_extra(None) is None


def test_epoch_progress_advances_from_a_statistics_read(device):
    monitor = StepMonitor(device, loss_sum=1.5, correct=2, seen=3)
    monitor.record(3, torch.tensor(0.5, device=device), torch.tensor(4.0, device=device), 4)
    start = EpochProgress(epoch=1, batch=3, loss_sum=1.5, correct=2, seen=3, selection={"size": 8})
    after = start.advanced(4, monitor.read())
    assert after == EpochProgress(epoch=1, batch=4, loss_sum=3.5, correct=6, seen=7, selection={"size": 8})
    assert start.batch == 3  # frozen: a finite state keeps its own


# ------------------------------------------------------------------------------ run-folder files
def _coreset() -> dict[str, torch.Tensor]:
    return {"indices": torch.tensor([1, 4, 6]), "weights": torch.tensor([2.0, 1.0, 3.0]),
            "labels": torch.tensor([0, 1, 1])}


def test_coreset_npz_is_byte_identical_to_the_format_runs_always_wrote(tmp_path):
    RunFiles(tmp_path).write_coreset(2, **_coreset())
    reference = tmp_path / "reference.npz"
    with open(reference, "wb") as handle:
        np.savez(handle, **{k: v.numpy() for k, v in _coreset().items()}, epoch=np.array(2))
    assert (tmp_path / "coreset/epoch_003.npz").read_bytes() == reference.read_bytes()


def test_select_dump_writes_the_run_coreset_format_plus_its_extras(tmp_path):
    RunFiles(tmp_path).write_coreset(0, **_coreset())
    extra = {"label_histogram": np.array([1, 2]), "selector": np.array("craig"), "solver_s": np.array(0.5)}
    written = write_coreset_npz(tmp_path / "dump.npz", **_coreset(), epoch=0, extra=extra)
    run, dump = np.load(tmp_path / "coreset/epoch_001.npz"), np.load(tmp_path / "dump.npz")
    assert dump.files == [*run.files, *extra] == list(written)
    for key in run.files:
        assert dump[key].dtype == run[key].dtype and np.array_equal(dump[key], run[key]), key


def test_run_files_only_rank_0_writes(tmp_path):
    other = RunFiles(tmp_path, writes=False)
    other.write_recipe("a: 1\n")
    other.append_metrics({"epoch": 0})
    other.write_coreset(0, **_coreset())
    assert other.save_checkpoint(_state(), "last") == tmp_path / "last.safetensors"
    other.write_report({"a": 1}, "# r\n", b"png")
    assert list(tmp_path.iterdir()) == []


def test_resume_drops_the_metrics_of_epochs_it_redoes(tmp_path):
    files = RunFiles(tmp_path)
    for epoch in range(4):
        files.append_metrics({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
    assert [m["epoch"] for m in RunFiles(tmp_path, writes=False).metrics_before(2)] == [0, 1]
    assert len(files.metrics.read_text().splitlines()) == 4  # another rank leaves the file alone
    assert [m["epoch"] for m in files.metrics_before(2)] == [0, 1]
    assert [json.loads(x)["epoch"] for x in files.metrics.read_text().splitlines()] == [0, 1]
    assert RunFiles(tmp_path / "empty").metrics_before(3) == []


def test_report_json_is_written_last(tmp_path, monkeypatch):
    from advtrain.io import files

    order = []
    real = files.write_atomically
    monkeypatch.setattr(files, "write_atomically",
                        lambda path, write, **kw: (order.append(path.name), real(path, write, **kw)))
    RunFiles(tmp_path).write_report({"name": "x", "v": np.float32(0.5)}, "# x\n", b"\x89PNG")
    assert order == ["report.md", "curves.png", "report.json"]
    assert json.loads((tmp_path / "report.json").read_text()) == {"name": "x", "v": 0.5}


# ------------------------------------------------------------------------------ overfit guard
class _Constant(nn.Module):
    """Predicts class ``k`` whatever the input (so no attack can change its answer)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), 2).float() * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("best, accuracy, drop, expected", [
    (None, 0.0, 0.2, False), (0.8, 0.75, 0.2, False), (0.8, 0.1, 0.2, True), (0.5, 0.3, 0.2, False)])
def test_collapse_is_a_fall_beyond_the_allowed_drop(best, accuracy, drop, expected):
    assert overfit.collapsed(best, accuracy, drop) is expected


@pytest.mark.parametrize("k, best, collapsed, new_best", [(0, None, False, 1.0), (1, 0.9, True, 0.9),
                                                          (0, 0.9, False, 1.0)])
def test_overfit_probe_on_its_own(k, best, collapsed, new_best):
    from advtrain.data.source import ArraySource

    source = ArraySource(torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8), torch.zeros(12, dtype=torch.long))
    probe = overfit.check_overfit(_Constant(k), source, None, batch_size=8, num_classes=2,
                                  device=torch.device("cpu"), best=best, drop=0.2)
    assert probe.accuracy == (1.0 if k == 0 else 0.0)
    assert probe.collapsed is collapsed and probe.best == new_best


def test_overfit_probe_attacks_in_the_training_norm_at_its_eps():
    from advtrain.attacks import PGDParams

    assert overfit.probe_attack(PGDParams(norm="l2", eps=0.5)).name == "pgd5-l2"
    assert overfit.probe_attack(PGDParams(norm="l2", eps=0.5)).eps == 0.5
    assert overfit.probe_attack(None).name == "pgd5"


# ------------------------------------------------------------------------------ signals, DDP loss
def test_stop_request_records_the_first_signal_and_a_second_sigint_stops_at_once():
    said = []
    stop = StopRequest(said.append)
    before = signal.getsignal(signal.SIGTERM)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        assert said == ["SIGTERM: finishing the current step, then saving..."]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    assert StopRequest(said.append).name == "signal"


def test_global_loss_of_one_rank_is_the_weighted_mean():
    from advtrain.objectives import weighted_mean

    losses, weights = torch.tensor([1.0, 2.0, 4.0], requires_grad=True), torch.tensor([1.0, 0.5, 2.0])
    loss, value, correct, count, stop = distributed.global_weighted_loss(
        distributed.DistContext(), losses, weights, torch.tensor(2), 3, stop=True)
    assert torch.allclose(loss, weighted_mean(losses, weights)) and torch.allclose(value, loss.detach())
    assert (float(correct), float(count), float(stop)) == (2.0, 3.0, 1.0)
    loss.backward()
    assert torch.allclose(losses.grad, weights / weights.sum())


# ------------------------------------------------------------------------------ the loop itself
def test_trainer_leaves_claiming_the_run_folder_to_its_caller(tmp_path):
    from advtrain.config.load import load_recipe
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    recipe = load_recipe(str(os.path.join(os.path.dirname(__file__), "..", "assets", "tiny.yaml")),
                         [f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="RunFolder.claim"):
        Trainer(recipe, SilentReporter()).fit(None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["fit", "train_epoch"])
def test_the_loop_reads_in_one_screen(name):
    from advtrain.train.loop import Trainer

    source = textwrap.dedent(inspect.getsource(getattr(Trainer, name)))
    node = ast.parse(source).body[0]
    assert node.end_lineno - node.lineno + 1 <= 40


def test_a_collapse_on_a_data_parallel_rank_other_than_0_stops_without_building_rank0s_message(tiny_recipe,
                                                                                               tmp_path):
    """Ranks other than 0 never measured the probe (``probe_best`` is None there); they used to crash
    formatting rank 0's message instead of stopping with it."""
    from advtrain.config.load import load_recipe
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    recipe = load_recipe(str(tiny_recipe), [f"output.dir={tmp_path / 'run'}"])
    trainer = Trainer(recipe, SilentReporter())
    trainer.dist = distributed.DistContext(rank=1, world=2)
    assert trainer.probe_best is None  # no probe in the metrics yet
    trainer._revert_after_collapse(0, MetricsLine(0, "full", overfit_probe_pgd5=0.1))
    assert trainer.stopped_early


# ------------------------------------------------------------------------------ the run state
def _trainer(tiny_recipe, tmp_path, *overrides):
    from advtrain.config.load import load_recipe
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    return Trainer(load_recipe(str(tiny_recipe), [f"output.dir={tmp_path / 'run'}", *overrides]), SilentReporter())


def test_trainer_holds_at_most_16_attributes(tiny_recipe, tmp_path):
    """Setting, components, state: the run state lives in one RunState, not in a dozen attributes (was 31;
    16 since the model the attacks run on, train.fold_bn, is a component of its own)."""
    trainer = _trainer(tiny_recipe, tmp_path)
    assert len(vars(trainer)) <= 16, sorted(vars(trainer))
    assert not trainer.scaler.is_enabled()  # fp32: the step calls a pass-through scaler, never branches on it


CORESET = ["selector=gradmatch", "selector.fraction=0.5", "selector.granularity=sample", "schedule.warm_start_epochs=1"]


def _write_format_1(path, trainer, *, epoch, step, coreset, extra=None):
    """A checkpoint as advtrain wrote it before RunState (format 1), written key by key from the raw format."""
    import random

    from safetensors.torch import save_file

    opt = trainer.optimizer.state_dict()
    tensors = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    tensors.update({f"optim.{pid}.{k}": v.clone() for pid, slots in opt["state"].items() for k, v in slots.items()})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors.update({"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64)),
                    "coreset.indices": coreset, "coreset.weights": torch.full((len(coreset),), 2.0)})
    meta = {"format_version": 1, "advtrain_version": "0.1.0", "git": "abc1234", "kind": "last",
            "model_name": "small_cnn", "num_classes": 4, "in_chans": 3, "epoch": epoch, "step": step,
            "best_metric": 0.25, "best_epoch": 0, "coreset_epoch": 1, "scaler": None, "extra": extra or {},
            "run_id": "f" * 32, "optimizer": {"param_groups": opt["param_groups"], "scalars": {}},
            "rng": {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}}
    save_file(tensors, str(path), metadata={"advtrain": json.dumps(meta), "recipe": trainer.recipe.to_yaml(),
                                            "model_name": "small_cnn", "advtrain_version": "0.1.0"})


def test_a_format_1_checkpoint_of_the_previous_writer_resumes_into_the_run_state(tiny_recipe, tmp_path):
    trainer = _trainer(tiny_recipe, tmp_path, *CORESET)
    coreset = torch.arange(0, 72, 2)  # 36 of the 72 training samples: the recipe's budget
    _write_format_1(tmp_path / "old.safetensors", trainer, epoch=1, step=10, coreset=coreset)
    fresh = _trainer(tiny_recipe, tmp_path, *CORESET)
    fresh.load(tmp_path / "old.safetensors", force=False)
    state = fresh.state
    assert (state.epoch, state.step, state.run_id, state.best_metric, state.best_epoch) == (2, 10, "f" * 32, 0.25, 0)
    assert torch.equal(state.coreset.indices, coreset) and state.coreset.epoch == 1 and state.in_epoch is None
    # saved again, it is the same format 1 metadata
    ckpt_io.save(tmp_path / "new.safetensors", fresh.snapshot())
    meta = ckpt_io.load(tmp_path / "new.safetensors").meta
    assert (meta["epoch"], meta["step"], meta["coreset_epoch"], meta["scaler"], meta["extra"]) == (1, 10, 1, None, {})


def test_a_format_1_mid_epoch_checkpoint_resumes_inside_its_epoch(tiny_recipe, tmp_path):
    trainer = _trainer(tiny_recipe, tmp_path, *CORESET)
    extra = {"in_epoch": {"epoch": 2, "batch": 3, "partial": {"loss_sum": 1.5, "correct": 4, "seen": 48,
                                                              "selection": {"total_s": 0.5, "size": 36}}}}
    _write_format_1(tmp_path / "old.safetensors", trainer, epoch=1, step=13, coreset=torch.arange(36), extra=extra)
    trainer.load(tmp_path / "old.safetensors", force=False)
    assert trainer.state.epoch == 2 and trainer.state.in_epoch == EpochProgress(2, 3, 1.5, 4, 48,
                                                                                 {"total_s": 0.5, "size": 36})


def test_resume_takes_the_recipes_optimizer_settings_and_refuses_others(tiny_recipe, tmp_path):
    from advtrain.errors import CheckpointError

    trainer = _trainer(tiny_recipe, tmp_path)
    for group in trainer.optimizer.param_groups:
        group["maximize"] = True  # a checkpoint trained by gradient ascent
    ckpt_io.save(tmp_path / "ascent.safetensors", trainer.snapshot())
    fresh = _trainer(tiny_recipe, tmp_path)
    with pytest.raises(CheckpointError, match=r"param_groups\[0\]\.maximize: checkpoint True vs recipe False"):
        fresh.load(tmp_path / "ascent.safetensors", force=False)
    fresh.load(tmp_path / "ascent.safetensors", force=True)  # --force: the recipe's settings, not the checkpoint's
    assert all(group["maximize"] is False for group in fresh.optimizer.param_groups)


@pytest.mark.parametrize("granularity, per_class, expected", [
    ("sample", False, (36, 36)), ("batch", False, (36, 68)), ("batch", True, (36, 72))])
def test_coreset_size_bounds_follow_the_selector_budget(granularity, per_class, expected):
    from types import SimpleNamespace

    from advtrain.train.budget import coreset_size_bounds

    params = SimpleNamespace(fraction=0.5, granularity=granularity, per_class=per_class, batch_size=None)
    assert coreset_size_bounds(params, torch.arange(72) % 4, 16) == expected
    assert coreset_size_bounds(SimpleNamespace(), torch.arange(72), 16) is None  # selector=full: no budget


def test_coreset_size_bounds_hold_for_real_selections():
    """Every selector, both granularities, per class or not: the coreset it makes lies within the bounds."""
    from advtrain.selection import SELECTORS
    from advtrain.train.budget import coreset_size_bounds

    labels = torch.arange(90) % 3
    features = torch.randn(90, 6, generator=torch.Generator().manual_seed(0))
    for name in ("random", "craig", "gradmatch"):
        for granularity in ("sample", "batch"):
            for per_class in (False, True):
                entry = SELECTORS.get(name)
                params = entry.params(fraction=0.3, granularity=granularity, per_class=per_class)
                coreset = entry.build(params)(features, labels, generator=torch.Generator().manual_seed(1),
                                              batch_size=8)
                lo, hi = coreset_size_bounds(params, labels, 8)
                assert lo <= len(coreset) <= hi, (name, granularity, per_class, len(coreset))
                assert len(torch.unique(coreset.indices)) == len(coreset)


# ------------------------------------------------------------------------------ train.compile
@pytest.mark.parametrize("setting, device, wanted", [
    ("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False)])
def test_compile_auto_is_on_for_cuda_only(setting, device, wanted):
    from advtrain.train.compiled import compile_message, compile_wanted

    assert compile_wanted(setting, torch.device(device)) is wanted
    assert (compile_message(setting, torch.device(device)) is not None) is wanted


def test_a_failed_compilation_falls_back_to_eager_once_with_a_message(tiny_recipe, tmp_path, monkeypatch):
    """Forced on a CPU: torch.compile gives a module whose first call fails as a backend would."""
    from advtrain.config.load import load_recipe
    from advtrain.train.compiled import CompiledModel
    from advtrain.train.loop import Trainer

    class BrokenBackend(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            raise RuntimeError("backend compiler failed: no C++ compiler\ndetails")

    broken = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: broken.setdefault("module", BrokenBackend(model)))
    messages = []

    class Recorder:
        def __getattr__(self, name):
            return lambda *args, **kwargs: messages.append(args[0]) if name == "message" else None

    recipe = load_recipe(str(tiny_recipe), [f"output.dir={tmp_path / 'run'}", "train.compile=true"])
    trainer = Trainer(recipe, Recorder())
    assert isinstance(trainer.train_model, CompiledModel)
    stats = trainer.train_epoch(0, "full")
    assert stats["samples"] == 72 and stats["train_loss"] == stats["train_loss"]
    assert broken["module"].calls == 1  # given up at the first call, never tried again
    assert trainer.train_model.fallback == "RuntimeError: backend compiler failed: no C++ compiler"
    assert trainer.train_model.warmup_s is None
    assert [m for m in messages if "torch.compile failed" in m] == [
        "torch.compile failed at its first call (RuntimeError: backend compiler failed: no C++ compiler); training "
        "continues eagerly (set train.compile=false to skip compiling)"]
    assert any(m.startswith("train.compile=true: compiling the model") for m in messages)


def test_the_fallback_trains_exactly_as_eager(tiny_recipe, tmp_path, monkeypatch):
    losses = []
    for compiled in (False, True):
        if compiled:
            monkeypatch.setattr(torch, "compile", lambda model, **kwargs: _Failing())
        trainer = _trainer(tiny_recipe, tmp_path / str(compiled), f"train.compile={str(compiled).lower()}")
        losses.append(trainer.train_epoch(0, "full")["train_loss"])
    assert losses[0] == losses[1]  # the same computation, bit for bit


class _Failing(nn.Module):
    def forward(self, *args, **kwargs):
        raise RuntimeError("inductor: lowering failed")


@pytest.mark.parametrize("value, ok", [("auto", True), ("true", True), ("false", True), ("maybe", False),
                                       ("2", False), ("[1]", False)])
def test_train_compile_accepts_true_false_auto(tiny_recipe, value, ok):
    from advtrain.config.load import load_recipe
    from advtrain.errors import RecipeError

    if ok:
        assert load_recipe(str(tiny_recipe), [f"train.compile={value}"]).train.compile == \
            {"auto": "auto", "true": True, "false": False}[value]
    else:
        with pytest.raises(RecipeError, match="train.compile"):
            load_recipe(str(tiny_recipe), [f"train.compile={value}"])


# ------------------------------------------------------------------------------ typed records
def test_a_metrics_line_is_written_as_before_and_reads_back():
    """Keys an epoch did not measure stay out of the line (not null), as metrics.jsonl always had them."""
    skipped = MetricsLine(3, "skip", lr=0.01, epoch_time=0.5)
    assert set(skipped.to_json()) == {"epoch", "phase", "train_loss", "train_acc", "samples", "lr", "coreset_size",
                                      "selection", "epoch_time"}
    line = {"epoch": 4, "phase": "coreset", "train_loss": 1.25, "train_acc": 0.5, "samples": 36, "train_time": 2.0,
            "lr": 0.1, "coreset_size": 36, "selection": {"total_s": 1.0, "size": 36}, "eval_time": 0.25,
            "val": {"clean": 0.5, "pgd3": 0.25}, "epoch_time": 3.5}
    assert MetricsLine.from_json(line).to_json() == line
    assert MetricsLine.from_json({**line, "from_a_newer_version": 1}).to_json() == line


def test_the_run_report_is_made_from_values(tiny_recipe):
    from advtrain.config.load import load_recipe
    from advtrain.reports.run import run_report
    from advtrain.train.loop import RunResult

    recipe = load_recipe(str(tiny_recipe), [])
    lines = [MetricsLine(0, "full", train_time=4.0, epoch_time=5.0, val={"clean": 0.5, "pgd3": 0.25}),
             MetricsLine(1, "full", train_time=4.0, epoch_time=5.0, compile_warmup_s=1.5)]
    result = RunResult(Path("runs/tiny"), 2, 11.0, {"clean": 0.5, "pgd3": 0.25}, None, 0.25, 0, lines,
                       compile={"setting": "auto", "compiled": True, "warmup_s": 1.5, "fallback": None})
    report = run_report(recipe, result, model_name="small_cnn", eval_attacks=[])
    assert (report.model, report.epochs_run, report.train_seconds, report.best_epoch) == ("small_cnn", 2, 10.0, 1)
    assert report.compile["warmup_s"] == 1.5 and report.to_json()["recipe"] == recipe.resolved


def test_load_reads_only_the_bookkeeping_tensors_and_a_wrong_model_tensor_is_never_read(tmp_path, monkeypatch):
    """Model and optimizer tensors are read only once their headers fit the model: nothing is allocated before."""
    model = nn.Linear(3, 2)
    state = ckpt_io.TrainingState(model=model.state_dict(), optimizer=None, recipe_yaml="a: 1\n", model_name="m",
                                  num_classes=2, in_chans=1)
    ckpt_io.save(tmp_path / "c.safetensors", state)
    read = []
    real = ckpt_io.Checkpoint.section
    monkeypatch.setattr(ckpt_io.Checkpoint, "section", lambda self, prefix: read.append(prefix) or real(self, prefix))
    ckpt = ckpt_io.load(tmp_path / "c.safetensors")
    assert read == ["rng", "coreset"] and ckpt.headers["model.weight"] == (torch.float32, (2, 3))
    wide = nn.Linear(4, 2)
    wide.model_name, wide.num_classes = "m", 2
    with pytest.raises(ckpt_io.CheckpointError, match=r"tensor 'model.weight' is float32 of shape \(2, 3\) in the "
                                                      r"checkpoint but model 'm' expects float32 of shape \(2, 4\)"):
        ckpt_io.load_model_weights(ckpt, wide)
    assert read == ["rng", "coreset"]  # refused from the header
