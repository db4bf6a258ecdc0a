"""Weights advtrain did not write (timm, torchvision, plain state dicts) and ``advtrain.load``: safetensors only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from advtrain.errors import UserError
from advtrain.models import build_model
from advtrain.models.external import (
    Arch,
    WeightsError,
    build_network,
    external_classifier,
    load_weights,
    network_state,
    parse_arch,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def _no_pickles_no_downloads(monkeypatch):
    """torch.load (a pickle) and any hub download fail the test if anything calls them."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load / a download was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", refuse)


def _random_state(net):
    torch.manual_seed(1)
    def changed(key, v):
        if not v.is_floating_point():
            return v.clone()
        if key.endswith("running_var"):
            return v * (1 + torch.rand_like(v))  # stays positive
        return v + 0.02 * torch.randn_like(v)

    return {k: changed(k, v) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("arch", ["timm:resnet10t", "torchvision:shufflenet_v2_x0_5"])
def test_external_weights_reproduce_the_network(tmp_path, arch):
    parsed = parse_arch(arch)
    source_net = build_network(parsed, num_classes=5, in_chans=3).eval()
    state = _random_state(source_net)
    source_net.load_state_dict(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    model = external_classifier(parsed, tmp_path / "w.safetensors", num_classes=5, in_chans=3, mean=MEAN, std=STD)
    assert not model.training and model.model_name == arch and model.num_classes == 5
    x = torch.rand(2, 3, 32, 32)
    expected = source_net((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_bare_name_is_timm_and_unknown_names_get_hints():
    assert parse_arch("resnet10t") == Arch("timm", "resnet10t")
    with pytest.raises(UserError, match="did you mean"):
        parse_arch("torchvision:resnet19")
    with pytest.raises(UserError, match="unknown source 'keras'"):
        parse_arch("keras:resnet18")
    with pytest.raises(UserError, match="torchvision has no classification model 'fasterrcnn_resnet50_fpn'"):
        parse_arch("torchvision:fasterrcnn_resnet50_fpn")


def _small_net(classes=4):
    return build_model("small_cnn", num_classes=classes, in_chans=3, mean=MEAN, std=STD).net


def test_mismatch_names_every_tensor_and_both_shapes(tmp_path):
    state = _small_net(classes=7).state_dict()
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    net = _small_net(classes=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(net, tmp_path / "w.safetensors", owner="model 'small_cnn' (model.weights)")
    text = str(err.value)
    assert "is missing from the file" in text and "'extra.weight' is not part of the network" in text
    assert "shape (7," in text and "expects (4," in text and "num_classes or the architecture differs" in text
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing copied


def test_non_finite_and_integer_kind_are_refused(tmp_path):
    net = _small_net()
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][...] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match="non-finite"):
        load_weights(net, tmp_path / "nan.safetensors", owner="x")
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    state[key] = state[key].to(torch.int32)
    save_file(state, str(tmp_path / "int.safetensors"))
    with pytest.raises(WeightsError, match="int32 in the file"):
        load_weights(net, tmp_path / "int.safetensors", owner="x")


def test_half_precision_release_is_converted(tmp_path):
    source = _small_net()
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in _random_state(source).items()}
    save_file(state, str(tmp_path / "fp16.safetensors"))
    net = _small_net()
    load_weights(net, tmp_path / "fp16.safetensors", owner="x")
    name = next(k for k, v in state.items() if v.is_floating_point())
    assert net.state_dict()[name].dtype == torch.float32
    torch.testing.assert_close(net.state_dict()[name], state[name].float())


def test_layouts_classifier_checkpoint_and_ddp_prefix():
    t = {"a.weight": torch.zeros(1)}
    assert network_state({"net.a.weight": t["a.weight"], "normalize.mean": torch.zeros(3)}, {}) == t
    assert network_state({"model.net.a.weight": t["a.weight"], "model.normalize.std": torch.ones(3),
                          "rng.torch": torch.zeros(1)}, {"advtrain": "{}"}) == t
    assert network_state({"module.a.weight": t["a.weight"]}, {}) == t
    assert network_state(t, {}) == t


def test_pickles_and_missing_files_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04\x95 a pickle, not safetensors")
    with pytest.raises(WeightsError, match="never unpickles"):
        load_weights(_small_net(), path, owner="x")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(_small_net(), tmp_path / "absent.safetensors", owner="x")


def test_torchvision_needs_three_channels():
    with pytest.raises(UserError, match="3-channel"):
        build_network(Arch("torchvision", "shufflenet_v2_x0_5"), num_classes=3, in_chans=1)


# ------------------------------------------------------------------------------------- advtrain.load
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a real (two-step) tiny run, made through the CLI."""
    from typer.testing import CliRunner

    from advtrain.cli import app

    out = tmp_path_factory.mktemp("run") / "tiny"
    recipe = Path(__file__).resolve().parents[1] / "assets" / "tiny.yaml"
    result = CliRunner().invoke(app, ["run", str(recipe), f"output.dir={out}", "schedule.epochs=1",
                                      "train.max_steps_per_epoch=2", "eval.n_examples=4",
                                      "model.kwargs={drop_rate: 0.1}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "last.safetensors"


def test_load_returns_the_trained_model_with_its_normalisation(trained):
    import advtrain
    from advtrain.commands.evaluate import load_model_from_checkpoint

    model = advtrain.load(trained)
    assert not model.training and model.model_name == "small_cnn"
    _, _, data, reference = load_model_from_checkpoint(trained, [], torch.device("cpu"))
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(data.mean))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(data.std))
    x = torch.rand(3, *data.image_shape)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_load_refuses_what_is_not_an_advtrain_checkpoint(tmp_path):
    import advtrain
    from advtrain.errors import CheckpointError

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not an advtrain checkpoint"):
        advtrain.load(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        advtrain.load(tmp_path / "absent.safetensors")


def test_load_refuses_kwargs_outside_the_allow_list(trained, tmp_path):
    import advtrain
    from advtrain.errors import CheckpointError

    with safe_open(str(trained), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta["recipe"] = meta["recipe"].replace("drop_rate: 0.1", "checkpoint_path: weights.pth")
    assert "checkpoint_path" in meta["recipe"]
    save_file(tensors, str(tmp_path / "evil.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="checkpoint_path"):
        advtrain.load(tmp_path / "evil.safetensors")


def test_import_advtrain_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import advtrain, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
