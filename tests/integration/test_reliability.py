"""Crash safety: SIGKILL / SIGTERM mid-epoch and resume, divergence, full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from advtrain.errors import UserError
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.run_folder import RunFolder
from advtrain.selection import Coreset

# Long enough epochs (≈0.5-1 s each on 2 cores) that a kill lands inside one.
SLOW = ["data.n_train=1200", "data.batch_size=8", "schedule.epochs=3", "eval.every=0", "eval.n_examples=8",
        "selector=gradmatch", "selector.fraction=0.5", "schedule.warm_start_epochs=1", "schedule.select_every=1"]


def _model(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def _cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "advtrain", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _epochs_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _reference(tmp_path: Path, tiny_recipe: Path) -> dict[str, torch.Tensor]:
    proc = _cli(tmp_path, "run", str(tiny_recipe), *SLOW, "output.dir=runs/reference")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return _model(tmp_path / "runs/reference/last.safetensors")


# Both variants are slow (about 30 s each); make test keeps the cheaper kill chain of
# test_trust_boundary.py, and .ci/run runs these as well.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_bit_identical_weights(tmp_path, tiny_recipe, sig):
    reference = _reference(tmp_path, tiny_recipe)
    run = tmp_path / "runs/killed"
    proc = _cli(tmp_path, "run", str(tiny_recipe), *SLOW, "output.dir=runs/killed")
    _wait_for(lambda: (run / "last.safetensors").exists() and _epochs_logged(run) >= 1)
    time.sleep(0.2)  # inside epoch 2 (or its selection pass)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert _epochs_logged(run) < 3, "the run finished before the signal; the test proves nothing"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, out
        assert "SIGTERM" in out and "--resume" in out
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = _cli(tmp_path, "run", str(tiny_recipe), *SLOW, "output.dir=runs/killed", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    final = _model(run / "last.safetensors")
    for key in reference:
        assert torch.equal(reference[key], final[key]), key
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_divergence_stops_with_a_hint_and_keeps_a_finite_checkpoint(cli, tiny_recipe, tmp_path):
    # epoch 1 trains normally; at epoch 2 the lr jumps to 1e29 and the weights blow up
    code, out = cli("run", tiny_recipe, "schedule.epochs=3", "lr_schedule.gamma=1e30", "train.max_steps_per_epoch=4")
    assert code == 2, out
    assert "non-finite" in out and "at epoch 2" in out and "lower optim.lr" in out
    saved = load_file(str(tmp_path / "runs/tiny/last.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in saved.items() if k.startswith("model."))


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    state = ckpt_io.TrainingState(model={"w": torch.ones(3)}, optimizer=None, recipe_yaml="a: 1\n", model_name="m",
                                  num_classes=2, in_chans=1, run=ckpt_io.RunState(epoch=1, step=1))
    ckpt_io.save(path, state)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io, "save_file", disk_full)
    state.run.epoch = 2
    with pytest.raises(UserError, match="previous file, if any, is intact"):
        ckpt_io.save(path, state)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left behind


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    run = ckpt_io.RunState(epoch=5, step=20, best_metric=0.5, best_epoch=3,
                           coreset=Coreset(torch.tensor([1, 5]), torch.tensor([2.0, 3.0]), epoch=2))
    state = ckpt_io.TrainingState(model=model.state_dict(), optimizer=opt.state_dict(), recipe_yaml="name: x\n",
                                  model_name="lin", num_classes=2, in_chans=3, run=run)
    ckpt_io.save(tmp_path / "c.safetensors", state)
    ckpt = ckpt_io.load(tmp_path / "c.safetensors")
    assert ckpt.meta["epoch"] == 4 and ckpt.meta["model_name"] == "lin" and ckpt.recipe_yaml == "name: x\n"
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.section("model")[key], value)
    restored = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(ckpt_io.optimizer_state(ckpt))
    momentum = restored.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"])
    assert ckpt.tensors["coreset.indices"].tolist() == [1, 5]


def test_newer_format_and_foreign_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(UserError, match="not an advtrain checkpoint"):
        ckpt_io.load(foreign)
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.ones(2)}, str(newer), metadata={"advtrain": json.dumps({"format_version": 99}),
                                                          "recipe": "a: 1"})
    with pytest.raises(UserError, match="newer than this advtrain"):
        ckpt_io.load(newer)
    pickle_file = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, pickle_file)
    with pytest.raises(UserError, match="never unpickles"):
        ckpt_io.load(pickle_file)


def test_cuda_oom_suggests_a_smaller_batch_and_keeps_the_checkpoint(tmp_path, tiny_recipe, monkeypatch):
    from advtrain.config.load import load_recipe
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(str(tiny_recipe), ["schedule.epochs=2", "train.max_steps_per_epoch=2"])
    trainer = Trainer(recipe, SilentReporter())
    real_loss, calls = trainer.objective.loss, []

    def loss_then_oom(model, x, y, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 trains (2 steps), epoch 2 runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(model, x, y, **kwargs)

    monkeypatch.setattr(trainer.objective, "loss", loss_then_oom)
    with pytest.raises(UserError, match="smaller data.batch_size") as info, \
            RunFolder.claim(trainer.out_dir, resuming=False, overwrite=False) as folder:
        trainer.fit(folder)
    assert "epoch 2" in str(info.value) and "is kept" in str(info.value)
    assert load_file(str(tmp_path / "runs/tiny/last.safetensors"))


def test_catastrophic_overfitting_guard_stops_and_reverts(tmp_path, tiny_recipe, monkeypatch):
    from advtrain.config.load import load_recipe
    from advtrain.eval.robust import AttackResult, EvalResult
    from advtrain.train import loop, overfit
    from advtrain.ui.console import SilentReporter

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(str(tiny_recipe), ["schedule.epochs=4", "train.max_steps_per_epoch=2", "attack=fgsm",
                                            "train.overfit_guard=true", "eval.every=0"])
    probes = iter([0.8, 0.75, 0.1, 0.1])  # PGD-5 accuracy on the fixed batch collapses at epoch 3
    real_evaluate = overfit.evaluate

    def fake_evaluate(model, source, attacks, **kwargs):
        if attacks and attacks[0].name == "pgd5":
            acc = next(probes)
            return EvalResult(8, 1.0, [], [AttackResult("pgd5", "", acc, [], 0.0, torch.ones(8, dtype=torch.bool))],
                              acc, 0.0)
        return real_evaluate(model, source, attacks, **kwargs)

    monkeypatch.setattr(overfit, "evaluate", fake_evaluate)
    trainer = loop.Trainer(recipe, SilentReporter())
    with RunFolder.claim(trainer.out_dir, resuming=False, overwrite=False) as folder:
        result = trainer.fit(folder)
    assert trainer.stopped_early and result.epochs_run == 3
    saved = _model(tmp_path / "runs/tiny/last.safetensors")  # still the epoch-2 checkpoint
    current = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    for key, value in saved.items():
        assert torch.equal(value, current[key]), key
    lines = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert [m["overfit_probe_pgd5"] for m in lines] == [0.8, 0.75, 0.1]
