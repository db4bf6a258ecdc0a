"""Models in and out through the CLI: ``advtrain eval --arch`` / ``--model-card`` and ``model.weights``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from advtrain.models import build_model

DATA = ["--data", "name=synthetic", "--data", "n_train=16", "--data", "n_test=12", "--data", "num_classes=3",
        "--data", "image_size=16", "--data", "val_fraction=0"]


def _timm_weights(path, classes=3):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=classes)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def test_eval_timm_weights_with_a_stated_threat_model(cli, tmp_path):
    _timm_weights(tmp_path / "r10.safetensors")
    code, out = cli("eval", tmp_path / "r10.safetensors", "--arch", "timm:resnet10t", "--threat", "l2@0.5",
                    "--mean", "none", "--std", "none", *DATA, "--attack", "clean,pgd20", "--steps", "2",
                    "--n-examples", "6", "--out", tmp_path / "ev")
    assert code == 0, out
    assert "external weights" in out and "trained against: ℓ2 ε=0.5 (the stated threat model: --threat" in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["model"] == "timm:resnet10t" and report["checkpoint_kind"] == "external"
    assert report["epoch"] is None and report["dataset"] == "synthetic"
    pgd = next(a for a in report["attacks"] if a["name"] == "pgd20")
    assert pgd["norm"] == "l2" and pgd["eps"] == "0.5"


def test_model_card_with_flags_over_it(cli, tmp_path):
    _timm_weights(tmp_path / "r10.safetensors")
    (tmp_path / "card.yaml").write_text(
        "model: {arch: resnet10t, weights: r10.safetensors, mean: dataset, std: dataset}\n"
        "threat: {norm: linf, eps: 8/255}\n"
        "data: {name: synthetic, n_train: 16, n_test: 12, num_classes: 3, image_size: 16, val_fraction: 0}\n")
    code, out = cli("eval", "--model-card", tmp_path / "card.yaml", "--threat", "linf@4/255", "--attack", "fgsm",
                    "--n-examples", "4")
    assert code == 0, out
    assert "ε=4/255" in out and (tmp_path / "eval" / "fgsm_eps4-255" / "report.json").exists()


def test_external_eval_refuses_what_it_cannot_know(cli, tmp_path):
    _timm_weights(tmp_path / "r10.safetensors", classes=5)
    code, out = cli("eval", tmp_path / "r10.safetensors", "--arch", "resnet10t", *DATA)
    assert code == 2
    assert "threat: missing" in out and "--threat linf@8/255" in out and "model.mean: missing" in out
    code, out = cli("eval", tmp_path / "r10.safetensors", "--arch", "resnet10t", "--threat", "linf@8/255",
                    "--mean", "none", "--std", "none", *DATA)
    assert code == 2 and "do not fit --arch timm:resnet10t" in out and "shape (5," in out
    code, out = cli("eval", tmp_path / "r10.safetensors", "--threat", "linf@8/255")
    assert code == 2 and "give --arch" in out
    code, out = cli("eval", tmp_path / "r10.safetensors", "--arch", "resnet10t", "--threat", "8/255")
    assert code == 2 and "NORM@EPS" in out


def _small_cnn_weights(path, classes=4, channels=3):
    model = build_model("small_cnn", num_classes=classes, in_chans=channels, mean=(0.5,) * channels,
                        std=(0.5,) * channels)
    torch.manual_seed(3)
    state = {k: (v + torch.randn_like(v) if v.is_floating_point() and "running_var" not in k else v).contiguous()
             for k, v in model.net.state_dict().items()}
    save_file(state, str(path))
    return state


def test_model_weights_start_training_from_the_file(tmp_path, tiny_recipe):
    from advtrain import build
    from advtrain.config.load import load_recipe

    state = _small_cnn_weights(tmp_path / "start.safetensors")
    recipe = load_recipe(str(tiny_recipe), [f"model.weights={tmp_path / 'start.safetensors'}"])
    model = build.build_model_for(recipe, build.build_data(recipe))
    for key, value in state.items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert recipe.resolved["model"]["weights"] == str(tmp_path / "start.safetensors")
    fresh = build.build_model_for(recipe, build.build_data(recipe), weights_from_checkpoint=True)
    key = next(iter(state))
    assert not torch.equal(fresh.net.state_dict()[key], state[key])  # a checkpoint's weights come next


def test_model_weights_mismatch_exits_2_before_training(cli, tmp_path, tiny_recipe):
    _small_cnn_weights(tmp_path / "seven.safetensors", classes=7)
    code, out = cli("run", tiny_recipe, "model.weights=seven.safetensors")
    assert code == 2
    assert "do not fit model 'small_cnn' (model.weights)" in out and "expects (4," in out
    assert not (tmp_path / "runs" / "tiny" / "last.safetensors").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("model.weights=w.pt", "not a .safetensors file"),
    ("model.pretrained=true", "both give starting weights"),
])
def test_model_weights_recipe_rules(cli, tmp_path, tiny_recipe, override, message):
    code, out = cli("validate", tiny_recipe, "model.weights=w.pt" if "pt" in override else
                    "model.weights=w.safetensors", override)
    assert code == 2 and message in out


def test_resume_does_not_read_model_weights_again(cli, tmp_path, tiny_recipe):
    _small_cnn_weights(tmp_path / "start.safetensors")
    args = ("run", tiny_recipe, "model.weights=start.safetensors", "eval.every=0", "eval.n_examples=4")
    code, out = cli(*args, "schedule.epochs=1")
    assert code == 0, out
    (tmp_path / "start.safetensors").unlink()
    code, out = cli(*args, "schedule.epochs=1", "--resume")
    assert code == 0, out  # already finished: the file is not needed
    assert "nothing" in out
