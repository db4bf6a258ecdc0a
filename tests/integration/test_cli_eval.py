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


def test_eval_perceptual_and_unseen_attacks(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "ppgd2@0.3,lpa2", "--attack", "unseen", "--steps", "2",
                    "--n-examples", "8")
    assert code == 0, out
    report = json.loads((tmp_path / "runs/tiny/eval/report.json").read_text())
    assert list(report["robust_acc"]) == ["ppgd2@0.3", "lpa2", "aa@8/255", "aa-l2@1", "stadv100@0.05",
                                          "recolor100@0.06"]
    rows = {r["name"]: r for r in report["attacks"]}
    assert rows["ppgd2@0.3"]["eps"] == "0.3" and rows["ppgd2@0.3"]["lpips_network"] == "self"
    assert rows["aa-l2@1"]["eps_float"] == 1.0 and rows["aa@8/255"]["eps"] == "8/255"
    assert rows["stadv100@0.05"]["steps"] == 2 and rows["stadv100@0.05"]["group"] == "unseen"
    unseen = [rows[n]["robust_acc"] for n in ("aa@8/255", "aa-l2@1", "stadv100@0.05", "recolor100@0.06")]
    assert report["union_acc_by_group"]["unseen"] <= min(unseen)
    assert report["threat_model"] == "L2+LPIPS+Linf+ReColorAdv+StAdv"
    assert "union of unseen" in (tmp_path / "runs/tiny/eval/report.md").read_text()


def test_eval_perceptual_alexnet_without_weights_is_clear(cli, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    code, out = cli("eval", tiny_checkpoint, "--attack", "ppgd2-alexnet", "--n-examples", "4")
    assert code == 2 and "alexnet-owt-7be5be79.pth" in out and "Traceback" not in out
