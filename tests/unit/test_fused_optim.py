"""``optim.fused``: the same update as the unfused optimizer, and checkpoints resume across the two."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from advtrain.errors import UserError
from advtrain.io import checkpoint as ckpt_io
from advtrain.optim import OPTIMIZERS
from advtrain.optim.optimizers import fused_wanted


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _optimizer(name: str, model: nn.Module, fused: bool | str) -> torch.optim.Optimizer:
    entry = OPTIMIZERS.get(name)
    params = entry.default_params()
    params.fused = fused
    return entry.build(params, model=model)


def _cpu_fused(name: str) -> bool:
    try:
        _optimizer(name, _model(), True)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("setting, device, wanted", [
    ("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False)])
def test_fused_auto_is_on_for_cuda_only(setting, device, wanted):
    assert fused_wanted(setting, torch.device(device)) is wanted


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_fused_update_is_the_unfused_one_through_the_loops_scaler_and_clipping(name):
    """The loop's sequence: scaled backward, unscale_, clip, scaler.step, update (scaler on: fp16's path)."""
    if not _cpu_fused(name):
        pytest.skip(f"torch {torch.__version__} has no fused {name} on CPU")
    finals = []
    for fused in (False, True):
        model = _model()
        opt = _optimizer(name, model, fused)
        assert opt.param_groups[0]["fused"] is (True if fused else None)  # off: torch's own default, as before
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_value_(model.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(finals[0], torch.cat([p.detach().flatten() for p in _model().parameters()]))  # it trained
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-5, atol=1e-6)


def test_fused_true_without_a_fused_update_is_a_clear_error_and_auto_keeps_the_unfused_one(monkeypatch):
    real = torch.optim.SGD

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on supported devices: ['cuda']")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", no_fused)
    with pytest.raises(UserError, match=r"optim.fused: true, but torch .* has no fused 'sgd' update for these "
                                        r"parameters on cpu \(RuntimeError: `fused=True` requires .*\); set "
                                        r"optim.fused=auto"):
        _optimizer("sgd", _model(), True)
    monkeypatch.setattr("advtrain.optim.optimizers.fused_wanted", lambda setting, device: True)  # as on CUDA
    assert _optimizer("sgd", _model(), "auto").param_groups[0]["fused"] is None


def test_fused_and_unfused_checkpoints_fit_each_other(tmp_path):
    """The same state either way: settings check and load succeed in both directions, no --force."""
    if not _cpu_fused("adam"):
        pytest.skip(f"torch {torch.__version__} has no fused adam on CPU")
    for saved, resumed in ((False, True), (True, False)):
        model = _model()
        opt = _optimizer("adam", model, saved)
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        state = ckpt_io.TrainingState(model=model.state_dict(), optimizer=opt.state_dict(), recipe_yaml="a: 1\n",
                                      model_name="m", num_classes=3, in_chans=1)
        path = tmp_path / f"{saved}.safetensors"
        ckpt_io.save(path, state)
        ckpt = ckpt_io.load(path)
        fresh = _optimizer("adam", _model(1), resumed)
        ckpt_io.check_optimizer_tensors(ckpt, [p for g in fresh.param_groups for p in g["params"]])
        ckpt_io.check_optimizer_settings(ckpt, fresh, "adam", force=False)
        # as io.checkpoint.resume loads it: the stored per-parameter state, the recipe's settings
        fresh.load_state_dict({"state": ckpt_io.optimizer_state(ckpt)["state"],
                               "param_groups": fresh.state_dict()["param_groups"]})
        assert fresh.param_groups[0]["fused"] is (True if resumed else None)
        loaded, stored = fresh.state_dict()["state"][0], opt.state_dict()["state"][0]
        torch.testing.assert_close(loaded["exp_avg"], stored["exp_avg"], rtol=0, atol=0)
        for p in fresh.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        fresh.step()  # the loaded step count fits the other implementation
        assert float(fresh.state_dict()["state"][0]["step"]) == 2.0


def test_a_stored_recipe_without_the_runtime_keys_or_with_other_values_resumes(tiny_recipe):
    from advtrain.config.load import load_recipe

    new = load_recipe(str(tiny_recipe), ["optim.fused=true", "train.compile_mode=reduce-overhead",
                                         "train.fold_bn=true"]).resolved
    old = {**new, "optim": {k: v for k, v in new["optim"].items() if k != "fused"},
           "train": {k: v for k, v in new["train"].items() if k not in ("compile_mode", "compile", "fold_bn")}}
    assert ckpt_io.recipe_differences(old, new) == []
    other = {**new, "optim": {**new["optim"], "fused": False, "lr": 0.5},
             "train": {**new["train"], "fold_bn": False, "compile": False}}
    assert ckpt_io.recipe_differences(other, new) == ["optim.lr: checkpoint 0.5 vs recipe 0.05"]


def test_a_run_trained_unfused_resumes_fused_to_the_same_weights(cli, tiny_recipe, tmp_path):
    if not _cpu_fused("sgd"):
        pytest.skip(f"torch {torch.__version__} has no fused sgd on CPU")
    tiny = ["schedule.epochs=2", "train.max_steps_per_epoch=3", "eval.every=0", "eval.n_examples=8"]
    assert cli("run", tiny_recipe, *tiny, "optim.fused=false", "output.keep_every=1")[0] == 0
    mid = tmp_path / "runs/tiny/epoch_001.safetensors"
    code, out = cli("run", tiny_recipe, *tiny, "optim.fused=true", "output.dir=runs/fused", "--resume-from", mid)
    assert code == 0, out
    full, resumed = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("runs/tiny", "runs/fused"))
    for key in (k for k in full if k.startswith("model.")):
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6)
