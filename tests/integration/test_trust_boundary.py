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


@pytest.mark.slow  # a 2,000-image PGD-50 evaluation to interrupt, ~14 s: run by .ci/run
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


# ------------------------------------------------------------------------ writes through planted links
#: Every name advtrain writes (or deletes) in a run folder, planted as a link to a file outside it.
PLANTED = [".advtrain.lock", "metrics.jsonl", "recipe.yaml", ".advtrain-run", "last.safetensors", "best.safetensors",
           "report.json", "report.md", "curves.png", "epoch_001.safetensors", "coreset", "coreset/epoch_000.npz",
           "eval", ".last.safetensors.abc.tmp", "metrics.csv", "tensorboard", "tensorboard/events.out.tfevents.1"]


@pytest.mark.parametrize("name", PLANTED)
def test_a_link_planted_in_a_run_folder_is_refused_and_nothing_outside_changes(cli, tiny_recipe, tmp_path, name):
    run = tmp_path / "runs/tiny"
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_text("precious\n")
    (outside / "dir/.x.tmp").write_text("precious\n")
    if "/" in name:
        (run / name).parent.mkdir(parents=True)
    else:
        run.mkdir(parents=True)
    target = outside / ("dir" if name in ("coreset", "eval", "tensorboard") else "file")
    (run / name).symlink_to(target)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    resume = ["--resume"] if name in ("metrics.jsonl", "last.safetensors", "coreset") else []  # the same check
    code, out = cli("run", tiny_recipe, *TINY, *resume)
    assert code == 2, out
    assert "symbolic link" in out and name.split("/")[-1] in out and "Traceback" not in out
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert (run / name).is_symlink()  # not replaced either: the user decides what to do with it


def test_a_hard_linked_lock_file_is_refused_and_not_truncated(cli, tiny_recipe, tmp_path):
    run = tmp_path / "runs/tiny"
    run.mkdir(parents=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    os.link(precious, run / ".advtrain.lock")
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 2 and "a hard link to another file" in out, out
    assert precious.read_text() == "keep me\n"


def test_a_link_planted_while_the_run_is_going_is_refused_at_the_write(tmp_path):
    from advtrain.errors import UserError
    from advtrain.io.run_files import RunFiles

    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "coreset").symlink_to(outside)
    files = RunFiles(run)
    import torch

    with pytest.raises(UserError, match="is a symbolic link"):
        files.write_coreset(0, indices=torch.arange(2), weights=torch.ones(2), labels=torch.zeros(2, dtype=torch.long))
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------ outputs of other commands
def test_outputs_never_replace_a_runs_files_or_foreign_files(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY)[0] == 0
    run = tmp_path / "runs/tiny"
    before = _files(run)
    cases = [
        (["eval", run / "last.safetensors", "--attack", "clean", "--out", run], "is the folder of the training run"),
        (["eval", run / "last.safetensors", "--attack", "clean", "--out", run / "coreset"], "is inside the folder"),
        (["select", tiny_recipe, *TINY, "--dump-indices", "--out", run / "last.safetensors"], "must name a .npz"),
        (["select", tiny_recipe, *TINY, "--dump-indices", "--out", run / "picked.npz"], "is inside the folder"),
        (["compare", run, "--out", run], "is the folder of the training run"),
    ]
    for args, expected in cases:
        code, out = cli(*args)
        assert code == 2 and expected in out and "Traceback" not in out, (args, out)
    assert _files(run) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.json").write_text('{"mine": 1}')
    code, out = cli("eval", run / "last.safetensors", "--attack", "clean", "--n-examples", "4", "--out", foreign)
    assert code == 2 and "written by another program" in out, out
    assert (foreign / "report.json").read_text() == '{"mine": 1}'
    (tmp_path / "notes.npz").write_bytes(b"my own file")
    code, out = cli("select", tiny_recipe, *TINY, "--dump-indices", "--out", "notes.npz")
    assert code == 2 and "is not a file advtrain select wrote" in out, out
    assert (tmp_path / "notes.npz").read_bytes() == b"my own file"
    for _ in range(2):  # the same command replaces its own earlier results
        code, out = cli("eval", run / "last.safetensors", "--attack", "clean", "--n-examples", "4", "--out", "ev")
        assert code == 0, out
        code, out = cli("select", tiny_recipe, *TINY, "--dump-indices", "--out", "picked.npz")
        assert code == 0, out
    code, out = cli("compare", run, "--out", "ev")  # eval's folder is not compare's
    assert code == 2 and "written by advtrain eval" in out, out


def test_files_follow_the_umask(cli, tiny_recipe, tmp_path):
    old = os.umask(0o027)
    try:
        assert cli("run", tiny_recipe, *TINY)[0] == 0
        assert cli("eval", "runs/tiny/best.safetensors", "--attack", "clean", "--n-examples", "4")[0] == 0
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "runs/tiny").rglob("*") if p.is_file()]
    assert {"last.safetensors", "report.json", "curves.png", "robust_vs_eps.png", "recipe.yaml"} <= \
        {p.name for p in written}
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes


# ------------------------------------------------------------------------------ full disks
def _disk_full_when(monkeypatch, predicate):
    import errno

    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if predicate(Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("name", ["recipe.yaml", "metrics.jsonl", "last.safetensors"])
def test_a_full_disk_at_any_run_file_is_a_clear_exit_2(cli, tiny_recipe, tmp_path, monkeypatch, name):
    _disk_full_when(monkeypatch, lambda dst: dst.name == name)
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 2, out
    assert f"could not write 'runs/tiny/{name}' (the disk is full" in out and "previous file" in out
    assert "Traceback" not in out
    assert not list((tmp_path / "runs/tiny").glob(".*.tmp"))  # no half-written temporary file left


def test_a_full_disk_while_claiming_the_folder_is_a_clear_exit_2(cli, tiny_recipe, tmp_path, monkeypatch):
    import errno

    real_write = os.write

    def write(fd, data):
        if data == f"{os.getpid()}\n".encode():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 2 and "cannot write the lock file" in out and "the disk is full" in out, out
    assert not (tmp_path / "runs/tiny").exists()  # the failed claim leaves no folder holding only a lock


# --------------------------------------------------------------- runs that stopped before a checkpoint
def test_a_run_stopped_before_its_first_checkpoint_restarts_plainly(cli, tiny_recipe, tmp_path):
    run = tmp_path / "runs/tiny"
    (run / "coreset").mkdir(parents=True)
    (run / ".advtrain-run").write_text("0123456789abcdef0123456789abcdef\n")
    (run / "recipe.yaml").write_text("name: tiny\n")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (run / ".advtrain.lock").write_text("12345\n")
    (run / "coreset/epoch_000.npz").write_bytes(b"")
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 2 and "nothing to resume" in out and "without --resume" in out, out
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 0, out
    assert "stopped before its first checkpoint" in out and "starting it again" in out
    assert (run / ".advtrain-run").read_text() != "0123456789abcdef0123456789abcdef\n"
    assert not (run / "coreset/epoch_000.npz").exists()


def test_dead_ends_name_the_way_out(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 2 and "without --resume" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))  # no lock-only folder left
    assert cli("run", tiny_recipe, *TINY, "output.keep_every=1")[0] == 0
    (tmp_path / "runs/tiny/last.safetensors").unlink()
    code, out = cli("run", tiny_recipe, *TINY, "--resume")
    assert code == 2 and "--resume-from runs/tiny/epoch_001.safetensors" in out and "--overwrite" in out, out
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 2 and "--resume" in out and "--overwrite" in out, out


def test_a_torn_last_metrics_line_does_not_stop_a_resume(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=2", "train.max_steps_per_epoch=1", "eval.n_examples=8")[0] == 0
    run = tmp_path / "runs/tiny"
    (run / "report.json").unlink()  # as if killed before the report
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    code, out = cli("run", tiny_recipe, "schedule.epochs=2", "train.max_steps_per_epoch=1", "eval.n_examples=8",
                    "--resume")
    assert code == 0, out
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    (run / "metrics.jsonl").write_text("not json\n" + lines[0] + "\n")
    code, out = cli("run", tiny_recipe, "schedule.epochs=3", "train.max_steps_per_epoch=1", "eval.n_examples=8",
                    "--resume", "--force")
    assert code == 2 and "metrics.jsonl' line 1 is damaged" in out and "Traceback" not in out, out


# ------------------------------------------------------------------------------- kill chains
CHAIN = ["data.n_train=240", "data.batch_size=8", "eval.every=0", "eval.n_examples=8", "selector=gradmatch",
         "selector.fraction=0.5", "schedule.warm_start_epochs=1", "schedule.select_every=1"]


def _model_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def _logged(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _kill_chain(tmp_path: Path, recipe: Path, epochs: int, after: list[int], seed: int) -> None:
    """SIGKILL a run once per entry of ``after`` (once that many epochs are logged, then a random moment later),
    each time continuing it (--resume, or a plain restart when no checkpoint was written yet); the final
    weights must equal an uninterrupted run's bit for bit."""
    import random

    import torch

    args = [str(recipe), *CHAIN, f"schedule.epochs={epochs}"]
    reference = _spawn(tmp_path, "run", *args, "output.dir=runs/reference")
    rng, run = random.Random(seed), tmp_path / "runs/killed"
    resume: list[str] = []
    for logged in after:
        proc = _spawn(tmp_path, "run", *args, "output.dir=runs/killed", *resume)
        end = time.monotonic() + 300
        while _logged(run) < logged and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4 if logged else 3.0))  # inside the next epoch, its selection or its save
        proc.kill()
        proc.communicate(timeout=60)
        resume = ["--resume"] if (run / "last.safetensors").exists() else []
    final = _spawn(tmp_path, "run", *args, "output.dir=runs/killed", *resume)
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out
    ours = _model_tensors(run / "last.safetensors")
    theirs = _model_tensors(tmp_path / "runs/reference/last.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(epochs))


@pytest.mark.slow  # four processes, ~15 s: .ci/run runs it beside the long chains
def test_a_chain_of_kills_resumes_to_bit_identical_weights(tmp_path, tiny_recipe):
    _kill_chain(tmp_path, tiny_recipe, epochs=3, after=[1, 2], seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_long_chain_of_kills_resumes_to_bit_identical_weights(tmp_path, tiny_recipe, seed):
    """Kills anywhere: before the first checkpoint (a plain restart), inside epochs, selections and saves."""
    import random

    after = sorted(random.Random(seed).choices(range(5), k=5))
    _kill_chain(tmp_path, tiny_recipe, epochs=5, after=after, seed=seed)
