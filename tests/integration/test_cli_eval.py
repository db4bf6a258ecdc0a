"""``advtrain eval`` on a tiny checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest


def reports(tmp_path: Path, run: str = "tiny") -> list[Path]:
    """The report folders of a run's evaluations, oldest first (each evaluation writes its own)."""
    root = tmp_path / "runs" / run / "eval"
    folders = [p for p in root.iterdir() if (p / "report.json").is_file()] if root.is_dir() else []
    return sorted(folders, key=lambda p: (p / "report.json").stat().st_mtime_ns)


def only_report(tmp_path: Path) -> Path:
    [folder] = reports(tmp_path)
    return folder


@pytest.fixture
def tiny_checkpoint(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=2")
    assert code == 0, out
    return tmp_path / "runs/tiny/best.safetensors"


def test_eval_writes_report_files(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean,fgsm", "--attack", "pgd5", "--attack", "cw5",
                    "--n-examples", "16", "--eps-sweep", "0,4/255,8/255")
    assert code == 0, out
    folder = only_report(tmp_path)
    assert folder.name == "fgsm+pgd5+cw5_eps8-255_sweep"
    for name in ("report.json", "report.md", "robust_vs_eps.png"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["n_examples"] == 16
    assert set(report["robust_acc"]) == {"fgsm", "pgd5", "cw5"}
    assert report["threat_model"] == "Linf"
    assert [r["eps"] for r in report["eps_sweep"]] == ["0", "4/255", "8/255"]
    assert len(report["per_class_clean_acc"]) == 4
    assert report["union_acc"] <= min(report["robust_acc"].values())
    # per-example results: indices and packed bits per attack give back every accuracy and the union
    from advtrain.reports.evaluation import per_example

    bits = {row["name"]: per_example(row) for row in report["attacks"]}
    assert all(list(b) == list(range(16)) for b in bits.values())
    for row in report["attacks"]:
        assert sum(bits[row["name"]].values()) / 16 == pytest.approx(row["robust_acc"])
    union = [all(bits[name][i] for name in ("fgsm", "pgd5", "cw5")) for i in range(16)]
    assert sum(union) / 16 == pytest.approx(report["union_acc"])
    markdown = (folder / "report.md").read_text()
    assert "| clean | none | no attack |" in markdown and "{" not in markdown
    # every accuracy cell of the attack table is a percentage with one decimal, never a raw float
    # (the time column may read 0.0 on a fast machine: it is seconds, not an accuracy)
    table = [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ")]
    header = next(cells for cells in table if cells[0].strip() == "attack")
    column = [c.strip() for c in header].index("accuracy")
    rows = [cells for cells in table if len(cells) == len(header) and cells is not header
            and not cells[0].strip().startswith("-")]
    assert rows and all(re.fullmatch(r"\d{1,3}\.\d%", cells[column].strip()) for cells in rows), rows


def test_eval_defaults_to_newest_run(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", "--attack", "clean", "--n-examples", "8")
    assert code == 0, out
    assert only_report(tmp_path).name == "clean"


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
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    assert report["split"] == "val" and report["n_examples"] == 48  # half of the 96 synthetic images
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean", "--data", "name=cifar10")
    assert code == 2 and "Traceback" not in out


def test_eval_perceptual_and_unseen_attacks(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "ppgd2@0.3,lpa2", "--attack", "unseen", "--steps", "2",
                    "--n-examples", "8")
    assert code == 0, out
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    assert list(report["robust_acc"]) == ["ppgd2@0.3", "lpa2", "aa@8/255", "aa-l2@1", "stadv100@0.05",
                                          "recolor100@0.06"]
    rows = {r["name"]: r for r in report["attacks"]}
    assert rows["ppgd2@0.3"]["eps"] == "0.3" and rows["ppgd2@0.3"]["lpips_network"] == "self"
    assert rows["aa-l2@1"]["eps_float"] == 1.0 and rows["aa@8/255"]["eps"] == "8/255"
    assert rows["stadv100@0.05"]["steps"] == 2 and rows["stadv100@0.05"]["group"] == "unseen"
    unseen = [rows[n]["robust_acc"] for n in ("aa@8/255", "aa-l2@1", "stadv100@0.05", "recolor100@0.06")]
    assert report["union_acc_by_group"]["unseen"] <= min(unseen)
    assert report["threat_model"] == "L2+LPIPS+Linf+ReColorAdv+StAdv"
    assert "union of unseen" in (only_report(tmp_path) / "report.md").read_text()


def test_eval_perceptual_alexnet_without_weights_is_clear(cli, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    code, out = cli("eval", tiny_checkpoint, "--attack", "ppgd2-alexnet", "--n-examples", "4")
    assert code == 2 and "alexnet-owt-7be5be79.pth" in out and "Traceback" not in out


# --- the checkpoint's threat model by default (issue 12) -------------------------------------------

@pytest.fixture
def train_tiny(cli, tiny_recipe, tmp_path):
    def train(*overrides: str):
        code, out = cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=2", *overrides)
        assert code == 0, out
        return tmp_path / "runs/tiny/best.safetensors"
    return train


@pytest.mark.parametrize("overrides,attack,norm,eps,source,at_training", [
    (("attack.eps=0.1",), "pgd2", "linf", 0.1, "checkpoint: training attack (pgd)", True),
    (("attack.norm=l2", "attack.eps=0.3", "attack.alpha=0.1"), "pgd2", "l2", 0.3,
     "checkpoint: training attack (pgd)", True),
    (("attack.eps=0.1", "eval.eps=0.05"), "pgd2", "linf", 0.05, "checkpoint: recipe eval.eps", False),
    (("objective=perceptual", "attack=fast_lpa", "attack.bound=0.3", "attack.steps=2"), "ppgd2", "lpips", 0.3,
     "checkpoint: training attack (fast_lpa)", True),
], ids=["linf", "l2", "eval-eps", "perceptual"])
def test_eval_defaults_to_the_checkpoints_threat_model(cli, train_tiny, tmp_path, overrides, attack, norm, eps,
                                                        source, at_training):
    checkpoint = train_tiny(*overrides)
    code, out = cli("eval", checkpoint, "--attack", attack, "--n-examples", "8")
    assert code == 0, out
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    row = report["attacks"][0]
    assert (row["norm"], row["eps_source"], row["at_training_eps"]) == (norm, source, at_training)
    assert row["eps_float"] == pytest.approx(eps)
    assert f"from {source}" in out and "trained against:" in out
    markdown = (only_report(tmp_path) / "report.md").read_text()
    assert f"({source}" in markdown


def test_eval_at_another_eps_is_labelled(cli, train_tiny, tmp_path):
    checkpoint = train_tiny("attack.eps=0.1")
    code, out = cli("eval", checkpoint, "--attack", "pgd2,pgd2-l2,fgsm@0.2", "--eps", "0.05", "--n-examples", "8")
    assert code == 0, out
    rows = {r["name"]: r for r in json.loads((only_report(tmp_path) / "report.json").read_text())["attacks"]}
    assert (rows["pgd2"]["eps"], rows["pgd2"]["eps_source"], rows["pgd2"]["at_training_eps"]) == \
        ("0.05", "--eps", False)
    assert rows["pgd2"]["alpha"] == pytest.approx(2.5 * 0.05 / 2)  # the step rule at the new ε
    assert (rows["pgd2-l2"]["norm"], rows["pgd2-l2"]["eps_source"]) == ("l2", "--eps")
    assert (rows["fgsm@0.2"]["eps_float"], rows["fgsm@0.2"]["eps_source"]) == (0.2, "@ suffix")
    assert "NOT the training ε" in out
    assert "NOT the training ε" in (only_report(tmp_path) / "report.md").read_text()


def test_eval_reduced_autoattack_reports_stages(cli, train_tiny, tmp_path):
    checkpoint = train_tiny()
    code, out = cli("eval", checkpoint, "--attack", "aa", "--steps", "2", "--n-examples", "8")
    assert code == 0, out
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    row = report["attacks"][0]
    assert row["standard"] is False and row["steps"] == 2 and "NON-STANDARD" in row["description"]
    stages = list(row["stage_acc"].values())
    assert list(row["stage_acc"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert stages == sorted(stages, reverse=True) and stages[-1] == row["robust_acc"] <= report["clean_acc"]
    markdown = (only_report(tmp_path) / "report.md").read_text()
    assert "## AutoAttack, accuracy after each stage" in markdown and "(non-standard)" in markdown
    assert "after apgd-t" in out


def test_eval_checks_the_stored_recipe_and_its_data_overrides_like_validate(cli, tiny_checkpoint, monkeypatch):
    """The stored recipe, with --data applied, goes through the one validation pass (data checks included)."""
    from advtrain.config import load

    checked = []
    real = load.check_against_data
    monkeypatch.setattr(load, "check_against_data", lambda recipe: checked.append(recipe) or real(recipe))
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean", "--n-examples", "4", "--data", "val_fraction=0.5")
    assert code == 0, out
    assert [r.components["data"].params.val_fraction for r in checked] == [0.5]
    code, out = cli("eval", tiny_checkpoint, "--attack", "clean", "--data", "image_size=1")
    assert code == 2 and "model 'small_cnn' cannot take the data's 3×1×1 images" in out
    assert len(checked) == 2


# --- evaluation results are kept (issue 25 item 5) ----------------------------------------------------

def test_each_eval_keeps_its_own_report(cli, tiny_checkpoint, tmp_path):
    code, out = cli("eval", tiny_checkpoint, "--attack", "pgd2", "--n-examples", "8")
    assert code == 0, out
    [first] = reports(tmp_path)
    assert first.name == "pgd2_eps8-255" and "earlier evaluations are kept" in out
    kept = {name: (first / name).read_bytes() for name in ("report.json", "report.md", "robust_vs_eps.png")}
    code, out = cli("eval", tiny_checkpoint, "--attack", "pgd2", "--n-examples", "16")  # the same name again
    assert code == 0, out
    code, out = cli("eval", tiny_checkpoint, "--attack", "pgd2", "--eps", "4/255", "--n-examples", "8")
    assert code == 0, out
    folders = reports(tmp_path)
    assert [f.name for f in folders] == ["pgd2_eps8-255", "pgd2_eps8-255-2", "pgd2_eps4-255"]
    assert {name: (first / name).read_bytes() for name in kept} == kept  # the first report is untouched
    assert json.loads((folders[1] / "report.json").read_text())["n_examples"] == 16
    # compare reads every kept evaluation of a run (the largest n per attack)
    from advtrain.reports.compare import load_run

    assert load_run(tmp_path / "runs/tiny").n_examples["pgd2"] == 16


def _npz_recipe(tmp_path: Path) -> list[str]:
    g = np.random.default_rng(0)
    np.savez(tmp_path / "data" / "small.npz", train_x=g.integers(0, 255, (48, 8, 8, 3), dtype=np.uint8),
             train_y=np.arange(48) % 4, test_x=g.integers(0, 255, (16, 8, 8, 3), dtype=np.uint8),
             test_y=np.arange(16) % 4)
    return ["data=arrays", "data.path=data/small.npz", "data.batch_size=16", "data.augment=none",
            "data.val_fraction=0.25"]


def test_eval_from_another_folder_finds_the_runs_relative_data(cli, tiny_recipe, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    code, out = cli("run", tiny_recipe, *_npz_recipe(tmp_path), "schedule.epochs=1",
                    "train.max_steps_per_epoch=2")
    assert code == 0, out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # data/small.npz does not exist from here
    code, out = cli("eval", tmp_path / "runs/tiny/best.safetensors", "--attack", "fgsm", "--n-examples", "8")
    assert code == 0, out
    assert json.loads((only_report(tmp_path) / "report.json").read_text())["n_examples"] == 8
    # a moved run folder: its origin is unknown, so the message names the key and how to point at the data
    (tmp_path / "runs/tiny").rename(tmp_path / "moved")
    code, out = cli("eval", tmp_path / "moved/best.safetensors", "--attack", "fgsm", "--n-examples", "8")
    assert code == 2 and "Traceback" not in out
    assert "data.path='data/small.npz'" in out and "--data path=/path/to/it" in out
    code, out = cli("eval", tmp_path / "moved/best.safetensors", "--attack", "fgsm", "--n-examples", "8",
                    "--data", f"path={tmp_path / 'data/small.npz'}")
    assert code == 0, out
