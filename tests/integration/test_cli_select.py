"""Adversarial coreset selection through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

CORESET = ["schedule.epochs=4", "schedule.warm_start_epochs=1", "schedule.select_every=2",
           "train.max_steps_per_epoch=3"]


def _model(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


@pytest.mark.parametrize("selector", ["craig", "gradmatch", "random"])
def test_run_with_selector_writes_coresets_and_timings(cli, tiny_recipe, tmp_path, selector):
    code, out = cli("run", tiny_recipe, *CORESET, f"selector={selector}", "selector.fraction=0.5",
                    "selector.batch_size=8")
    assert code == 0, out
    run = tmp_path / "runs/tiny"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["full", "coreset", "coreset", "coreset"]
    selections = [m["selection"] for m in metrics if m["selection"]]
    assert len(selections) == 2  # epochs 2 and 4 (1-based)
    assert set(selections[0]) >= {"attack_s", "features_s", "solver_s", "total_s"}
    saved = np.load(run / "coreset/epoch_002.npz")
    # budget 0.5 · 72 = 36 samples → ceil(36 / 8) = 5 whole batches of 8
    assert len(saved["indices"]) == metrics[1]["coreset_size"] == 40
    assert (saved["weights"] > 0).all()
    assert metrics[1]["samples"] <= 3 * 16


def test_selector_full_with_unit_weights_matches_plain_training(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=2", "train.max_steps_per_epoch=2", "selector=full",
               "output.dir=runs/a")[0] == 0
    assert cli("run", tiny_recipe, "schedule.epochs=2", "train.max_steps_per_epoch=2", "selector=random",
               "selector.fraction=1.0", "selector.granularity=sample", "output.dir=runs/b")[0] == 0
    # fraction 1.0 random = every sample at weight 1; the batches see the same data in the same order
    a, b = _model(tmp_path / "runs/a/last.safetensors"), _model(tmp_path / "runs/b/last.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_resume_mid_coreset_continues_identically(cli, tiny_recipe, tmp_path):
    args = [*CORESET, "selector=gradmatch", "selector.fraction=0.5", "selector.batch_size=8"]
    assert cli("run", tiny_recipe, *args, "output.keep_every=1")[0] == 0
    # epoch_003 = after the third epoch: a coreset chosen at epoch 2 is active, next selection at 4
    mid = tmp_path / "runs/tiny/epoch_003.safetensors"
    assert "coreset.indices" in load_file(str(mid))
    code, out = cli("run", tiny_recipe, *args, "output.dir=runs/resumed", "--resume-from", mid)
    assert code == 0, out
    a, b = _model(tmp_path / "runs/tiny/last.safetensors"), _model(tmp_path / "runs/resumed/last.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_select_dump_indices(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=2")[0] == 0
    args = ["select", tiny_recipe, "selector=craig", "selector.fraction=0.25", "selector.granularity=sample",
            "--checkpoint", tmp_path / "runs/tiny/last.safetensors", "--dump-indices", "--out", "c.npz"]
    code, out = cli(*args)
    assert code == 0, out
    first = dict(np.load(tmp_path / "c.npz"))
    assert len(first["indices"]) == 18 and first["weights"].sum() == pytest.approx(72)
    assert first["label_histogram"].sum() == 18
    assert {"attack_s", "features_s", "solver_s"} <= set(first)
    code, _ = cli(*args[:-1], "d.npz")
    second = dict(np.load(tmp_path / "d.npz"))
    assert np.array_equal(first["indices"], second["indices"])
    assert np.array_equal(first["weights"], second["weights"])


def test_select_requires_dump_flag(cli, tiny_recipe):
    code, out = cli("select", tiny_recipe)
    assert code == 2 and "--dump-indices" in out


def test_select_dump_is_the_run_coreset_format_plus_extras(cli, tiny_recipe, tmp_path):
    """One coreset writer: `advtrain select` writes the run folder's coreset keys and dtypes, then its own."""
    args = ["selector=gradmatch", "selector.fraction=0.5", "selector.batch_size=8"]
    assert cli("run", tiny_recipe, "schedule.epochs=2", "schedule.warm_start_epochs=1", "train.max_steps_per_epoch=2",
               *args)[0] == 0
    code, out = cli("select", tiny_recipe, *args, "--checkpoint", tmp_path / "runs/tiny/last.safetensors",
                    "--dump-indices", "--out", "c.npz")
    assert code == 0, out
    run, dump = np.load(tmp_path / "runs/tiny/coreset/epoch_002.npz"), np.load(tmp_path / "c.npz")
    assert run.files == ["indices", "weights", "labels", "epoch"]
    assert dump.files[:4] == run.files
    assert set(dump.files[4:]) == {"label_histogram", "train_label_histogram", "n_train", "selector", "attack_s",
                                   "features_s", "solver_s", "total_s", "size"}
    for key in run.files:
        assert dump[key].dtype == run[key].dtype and dump[key].ndim == run[key].ndim, key


def _stop_at_first_selection_batch(monkeypatch, cls, method: str) -> list[tuple]:
    """Patch ``cls.method`` (a selection progress callback) to send SIGINT to this process at its first
    attack batch, as a Ctrl-C would; returns the calls it saw."""
    import os
    import signal

    calls: list[tuple] = []
    original = getattr(cls, method)

    def patched(self, *args):
        calls.append(args[-3:])
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(cls, method, patched)
    return calls


def test_a_stop_request_mid_selection_stops_between_batches_and_resumes_identically(cli, tiny_recipe, tmp_path):
    from advtrain.ui import console

    args = [*CORESET, "selector=gradmatch", "selector.fraction=0.5", "selector.batch_size=8"]
    assert cli("run", tiny_recipe, *args, "output.dir=runs/straight")[0] == 0
    with pytest.MonkeyPatch.context() as patch:  # (monkeypatch.undo() would also undo the cli fixture's chdir)
        calls = _stop_at_first_selection_batch(patch, console.ProgressReporter, "selection")
        code, out = cli("run", tiny_recipe, *args, "output.dir=runs/stopped")
    assert code == 130, out
    # 72 training samples in batches of 16: 5 attack batches; the pass stopped after the first
    assert calls == [("attack", 1, 5)]
    assert "stopped by SIGINT after batch 1 of 5 of the coreset selection for epoch 2" in out
    assert "the end of epoch 1) is kept" in out and "--resume" in out
    stopped = tmp_path / "runs/stopped"
    assert len((stopped / "metrics.jsonl").read_text().splitlines()) == 1 and not (stopped / "coreset").exists()
    code, out = cli("run", tiny_recipe, *args, "output.dir=runs/stopped", "--resume")
    assert code == 0, out
    a, b = _model(tmp_path / "runs/straight/last.safetensors"), _model(stopped / "last.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_advtrain_select_shows_progress_and_stops_between_batches_writing_nothing(cli, tiny_recipe, tmp_path):
    from advtrain.ui import console

    with pytest.MonkeyPatch.context() as patch:
        calls = _stop_at_first_selection_batch(patch, console.SelectionProgress, "__call__")
        code, out = cli("select", tiny_recipe, "selector=gradmatch", "selector.fraction=0.5", "--dump-indices",
                        "--out", "c.npz")
    assert code == 130, out
    assert calls == [("attack", 1, 5)]
    assert "advtrain select stopped by SIGINT after batch 1 of 5 of the selection pass; nothing was written" in out
    assert not (tmp_path / "c.npz").exists()
    code, out = cli("select", tiny_recipe, "selector=gradmatch", "selector.fraction=0.5", "--dump-indices",
                    "--out", "c.npz")
    assert code == 0 and "gradmatch selection [attack+features] 5/5" in out and (tmp_path / "c.npz").is_file()
    assert "gradmatch selection [solver] 1/1" in out
