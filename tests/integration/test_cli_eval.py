"""``advtrain eval`` on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def tiny_checkpoint(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=2")
    assert code == 0, out
    return tmp_path / "runs/tiny/best.safetensors"


def test_eval_writes_report_files(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean,fgsm", "--attack", "pgd5", "--attack", "cw5",
                    "--n-examples", "16", "--eps-sweep", "0,4/255,8/255")
    assert code == 0, out
    folder = tmp_path / "runs/tiny/eval"
    for name in ("report.json", "report.md", "robust_vs_eps.png"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["n_examples"] == 16
    assert set(report["robust_acc"]) == {"fgsm", "pgd5", "cw5"}
    assert report["threat_model"] == "Linf"
    assert [r["eps"] for r in report["eps_sweep"]] == ["0", "4/255", "8/255"]
    assert len(report["per_class_clean_acc"]) == 4
    assert report["union_acc"] <= min(report["robust_acc"].values())


def test_eval_defaults_to_newest_run(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", "--attack", "clean", "--n-examples", "8")
    assert code == 0, out
    assert (tmp_path / "runs/tiny/eval/report.json").is_file()


def test_eval_unknown_attack_is_clear(cli, tiny_checkpoint):
    code, out = cli("eval", tiny_checkpoint, "--attack", "pgd5O")
    assert code == 2
    assert "unknown attack 'pgd5O'" in out and "Traceback" not in out


def test_eval_missing_checkpoint(cli):
    code, out = cli("eval", "runs/none/best.safetensors", "--attack", "clean")
    assert code == 2 and "does not exist" in out


def test_eval_bad_eps(cli, tiny_checkpoint):
    code, out = cli("eval", tiny_checkpoint, "--attack", "pgd5", "--eps", "8/0")
    assert code == 2 and "divides by zero" in out


def test_eval_data_override_and_val_split(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean", "--split", "val", "--data", "val_fraction=0.5",
                    "--n-examples", "1000")
    assert code == 0, out
    report = json.loads((tmp_path / "runs/tiny/eval/report.json").read_text())
    assert report["split"] == "val" and report["n_examples"] == 48  # half of the 96 synthetic images
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean", "--data", "name=cifar10")
    assert code == 2 and "Traceback" not in out
