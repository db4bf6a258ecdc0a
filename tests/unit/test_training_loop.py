"""The training loop's parts off the happy path: resume state, run-folder files, overfit guard, signals,
the data-parallel loss, and the shape of the loop itself."""

from __future__ import annotations

import ast
import inspect
import json
import os
import signal
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.io import checkpoint as ckpt_io
from advtrain.io.run_files import RunFiles, write_coreset_npz
from advtrain.runtime import distributed
from advtrain.runtime.interrupts import StopRequest
from advtrain.train import overfit
from advtrain.train.progress import EpochProgress
from advtrain.train.step_monitor import StepMonitor


def _state(**kw) -> ckpt_io.TrainingState:
    return ckpt_io.TrainingState(model={"w": torch.ones(3)}, optimizer=None, epoch=0, step=5, recipe_yaml="a: 1\n",
                                 model_name="m", num_classes=2, in_chans=1, **kw)


# ------------------------------------------------------------------------------ resume state
def test_epoch_progress_round_trips_through_a_checkpoint(tmp_path):
    selection = {"attack_s": 0.5, "features_s": 0.25, "solver_s": 0.125, "total_s": 0.875, "size": 40}
    progress = EpochProgress(epoch=3, batch=7, loss_sum=12.345678901234567, correct=40, seen=56, selection=selection)
    ckpt_io.save(tmp_path / "last.safetensors", _state(extra=progress.to_extra()))
    ckpt = ckpt_io.load(tmp_path / "last.safetensors")  # the metadata validator accepts it
    assert EpochProgress.from_extra(ckpt.meta["extra"]) == progress
    # the on-disk form is the one earlier advtrain versions wrote and read
    assert ckpt.meta["extra"] == {"in_epoch": {"epoch": 3, "batch": 7, "partial": {
        "loss_sum": 12.345678901234567, "correct": 40, "seen": 56, "selection": selection}}}


def test_epoch_progress_reads_older_checkpoints(tmp_path):
    # a divergence before the first statistics read used to save only the selection
    old = {"in_epoch": {"epoch": 2, "batch": 0, "partial": {"selection": None}}}
    ckpt_io.save(tmp_path / "old.safetensors", _state(extra=old))
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
    assert (tmp_path / "coreset/epoch_002.npz").read_bytes() == reference.read_bytes()


def test_select_dump_writes_the_run_coreset_format_plus_its_extras(tmp_path):
    RunFiles(tmp_path).write_coreset(0, **_coreset())
    extra = {"label_histogram": np.array([1, 2]), "selector": np.array("craig"), "solver_s": np.array(0.5)}
    written = write_coreset_npz(tmp_path / "dump.npz", **_coreset(), epoch=0, extra=extra)
    run, dump = np.load(tmp_path / "coreset/epoch_000.npz"), np.load(tmp_path / "dump.npz")
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
    class L2:
        norm, eps = "l2", 0.5

    assert overfit.probe_attack(L2()).name == "pgd5-l2"
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
    trainer.probe_best = None
    trainer._revert_after_collapse(0, {"epoch": 0, "overfit_probe_pgd5": 0.1})
    assert trainer.stopped_early
