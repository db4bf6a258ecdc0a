"""Run folders, signals outside training, console markup and the build-time last line of defence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["schedule.epochs=1", "train.max_steps_per_epoch=1", "eval.n_examples=8"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".advtrain.lock"}


def _spawn(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "advtrain", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float = 120.0) -> str:
    """Output up to and including the first line that contains ``marker``."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"{marker!r} never printed:\n{''.join(seen)}")


def test_resuming_a_finished_run_changes_nothing(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY)[0] == 0
    run = tmp_path / "runs/tiny"
    before = _files(run)
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 0, out
    assert "already finished all 1 epochs" in out and "nothing was changed" in out
    assert _files(run) == before


def test_stale_temp_files_are_removed_when_a_run_claims_its_folder(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY)[0] == 0
    run = tmp_path / "runs/tiny"
    stale = [run / ".last.safetensors.k1ll3d.tmp", run / ".report.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 0, out
    assert not any(path.exists() for path in stale)


def test_overwrite_replaces_every_file_of_the_old_run(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY, "output.keep_every=1")[0] == 0
    run = tmp_path / "runs/tiny"
    old_id = (run / ".advtrain-run").read_text()
    code, out = cli("run", tiny_recipe, *TINY, "--overwrite")
    assert code == 0, out
    assert not (run / "epoch_001.safetensors").exists()  # the old run's extra checkpoint is gone
    assert (run / ".advtrain-run").read_text() != old_id
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_markup_in_names_and_paths_prints_as_written(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, *TINY, "output.dir=runs/[/b][bold]x")
    assert code == 0, out
    assert "runs/[/b][bold]x" in out
    assert (tmp_path / "runs/[/b][bold]x/report.json").is_file()
    code, out = cli("eval", "runs/[/b][bold]x/last.safetensors", "--attack", "clean", "--n-examples", "4")
    assert code == 0, out
    assert "runs/[/b][bold]x/last.safetensors" in out


def test_a_failing_component_build_is_a_user_error_naming_it(cli, tiny_recipe, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("third-party failure")

    monkeypatch.setattr(torch.optim, "SGD", broken)
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 2
    assert "building optim 'sgd' failed: RuntimeError: third-party failure" in out
    assert "Traceback" not in out
    code, out = cli("--debug", "run", tiny_recipe, *TINY, "output.dir=runs/debug")
    assert code == 2
    assert "Traceback" in out and "third-party failure" in out


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGINT])
def test_signal_during_eval_exits_130_with_eval_wording(cli, tiny_recipe, tmp_path, sig):
    assert cli("run", tiny_recipe, *TINY)[0] == 0
    proc = _spawn(tmp_path, "eval", "runs/tiny/last.safetensors", "--attack", "pgd50", "--steps", "10000",
                  "--restarts", "100", "--out", "evaluated")
    _read_until(proc, "evaluating")
    time.sleep(0.3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert f"advtrain eval stopped by {sig.name}" in out and "Run the same command again" in out
    assert "--resume" not in out and "Traceback" not in out
    assert not (tmp_path / "evaluated/report.json").exists()


def test_sigterm_during_the_final_test_evaluation_then_resume_finishes(tmp_path, tiny_recipe):
    slow_test = ["data.n_test=2000", "data.val_fraction=0.05", "eval.n_examples=2000", "eval.batch_size=16",
                 "eval.attacks=[pgd50]", "schedule.epochs=1", "train.max_steps_per_epoch=1"]
    proc = _spawn(tmp_path, "run", str(tiny_recipe), *slow_test)
    _read_until(proc, "epoch   1")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    run = tmp_path / "runs/tiny"
    assert proc.returncode == 130, out
    assert "stopped by SIGTERM during the final test evaluation" in out and "--resume" in out
    assert "Traceback" not in out
    assert not (run / "report.json").exists()
    metrics = (run / "metrics.jsonl").read_bytes()
    resumed = _spawn(tmp_path, "run", str(tiny_recipe), *slow_test, "eval.n_examples=8", "--resume")
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["n_examples"] == 8 and report["final_val"]
    assert (run / "metrics.jsonl").read_bytes() == metrics  # no epoch was trained again
