"""The real CLI on a tiny recipe: outputs, resume, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY = ["schedule.epochs=2", "train.max_steps_per_epoch=3"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_run_writes_every_output(cli, tiny_recipe, tmp_path):
    code, out = cli("run", tiny_recipe, *TINY)
    assert code == 0, out
    run = tmp_path / "runs" / "tiny"
    for name in ("recipe.yaml", "metrics.jsonl", "last.safetensors", "best.safetensors", "report.json",
                 "report.md", "curves.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    assert set(lines[-1]["val"]) == {"clean", "pgd3"}
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["n_examples"] == 24
    assert "8/255" in (run / "recipe.yaml").read_text()
    assert "Traceback" not in out


def test_second_run_refuses_to_overwrite_earlier_results(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1")[0] == 0
    before = (tmp_path / "runs/tiny/last.safetensors").read_bytes()
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1")
    assert code == 2 and "already holds a run" in out
    assert (tmp_path / "runs/tiny/last.safetensors").read_bytes() == before


def test_resume_continues_to_the_same_weights(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, *TINY, "output.keep_every=1")[0] == 0
    mid = tmp_path / "runs/tiny/epoch_001.safetensors"
    code, out = cli("run", tiny_recipe, *TINY, "output.dir=runs/resumed", "--resume-from", mid)
    assert code == 0, out
    full = _weights(tmp_path / "runs/tiny/last.safetensors")
    resumed = _weights(tmp_path / "runs/resumed/last.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_resume_refuses_a_different_recipe(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1")[0] == 0
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1",
                    "optim.lr=0.5", "--resume")
    assert code == 2
    assert "optim.lr" in out and "--force" in out


def test_resume_with_another_architecture_names_both(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1")[0] == 0
    ckpt = tmp_path / "runs/tiny/last.safetensors"
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "model.name=resnet_tiny_cifar",
                    "output.dir=runs/other", "--resume-from", ckpt)
    assert code == 2
    assert "small_cnn" in out and "resnet_tiny_cifar" in out
    assert "Traceback" not in out


def test_truncated_checkpoint_is_a_clear_error(cli, tiny_recipe, tmp_path):
    assert cli("run", tiny_recipe, "schedule.epochs=1", "train.max_steps_per_epoch=1")[0] == 0
    ckpt = tmp_path / "runs/tiny/last.safetensors"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(ckpt.read_bytes()[:100])
    code, out = cli("eval", broken, "--attack", "clean")
    assert code == 2 and "not a readable safetensors checkpoint" in out
    code, out = cli("run", tiny_recipe, "schedule.epochs=1", "output.dir=runs/x", "--resume-from", broken)
    assert code == 2 and "not a readable safetensors checkpoint" in out


def test_unwritable_output_dir(cli, tiny_recipe, tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    code, out = cli("run", tiny_recipe, "output.dir=blocker/run")
    assert code == 2 and "output.dir 'blocker/run' is not writable" in out


def test_missing_recipe_and_bad_override(cli):
    code, out = cli("run", "nope.yaml")
    assert code == 2 and "does not exist" in out
    code, out = cli("validate", "digits_linf", "schedule.epochs")
    assert code == 2 and "key=value" in out


def test_validate_prints_resolved_recipe(cli, tiny_recipe):
    code, out = cli("validate", tiny_recipe, "selector=craig")
    assert code == 0, out
    assert "name: craig" in out and "fraction:" in out


LISTED = {  # what `advtrain list KIND` must show: a registration added or lost changes this table
    "models": ["preact_resnet18_cifar", "resnet18_cifar", "resnet50_cifar", "resnet_tiny_cifar", "small_cnn",
               "wrn34_10_cifar"],
    "datasets": ["arrays", "cifar10", "cifar100", "digits", "imagefolder", "svhn", "synthetic"],
    "objectives": ["adversarial", "clean", "perceptual", "trades"],
    "attacks": ["fast_lpa", "fgsm", "pgd", "trades_kl"],
    "selectors": ["craig", "full", "gradmatch", "random"],
    "optimizers": ["adam", "adamw", "sgd"],
    "lr_schedules": ["constant", "cosine", "cyclic", "multistep"],
    "recipes": ["cifar10_fast_at", "cifar10_l2", "cifar10_linf", "cifar10_perceptual", "cifar10_trades", "digits_linf",
                "digits_perceptual", "imagenet12_perceptual", "svhn_l2"],
}


@pytest.mark.parametrize("kind", list(LISTED))
def test_list_every_kind(cli, kind):
    from advtrain.cli import LIST_KINDS
    from advtrain.config.sections import SECTION_REGISTRIES

    assert set(LIST_KINDS) == set(LISTED)
    section = {"models": "model", "datasets": "data", "objectives": "objective", "attacks": "attack",
               "selectors": "selector", "optimizers": "optim", "lr_schedules": "lr_schedule"}.get(kind)
    registered = sorted(SECTION_REGISTRIES[section].names()) if section else \
        sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    assert registered == LISTED[kind]
    code, out = cli("list", kind)
    assert code == 0, out
    words = set(out.replace(",", " ").split())
    assert all(name in words for name in LISTED[kind]), sorted(set(LISTED[kind]) - words)


def test_list_unknown_kind(cli):
    code, out = cli("list", "atacks")
    assert code == 2 and "did you mean 'attacks'" in out
