"""BatchNorm folded into the convolutions for the attack's eval-mode passes (advtrain.models.folding, train.fold_bn).

The oracle is the eval-mode model itself. Tolerances: in float64 the folded view must agree to 1e-9
(the fold is exact algebra; anything looser would hide a wrong formula). In float32 the view and the
model round differently (W·s before the convolution instead of s after it): logits agree to about
1e-7 of their scale, so 1e-4 holds on any CPU or BLAS; input gradients are compared by norm (1e-3),
because a ReLU input that lies within round-off of zero may switch sides and change a few entries
of the gradient, which a max-entry comparison would blow up. TRADES' KL ascent starts 0.001 from x,
where the KL gradient is of the size of round-off and its sign is noise, so it is compared in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks._common import attack_mode
from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.attacks.trades_kl import TradesKLParams, trades_kl
from advtrain.models import build_model
from advtrain.models.cifar import CifarResNet
from advtrain.models.classifier import Classifier
from advtrain.models.folding import AttackView, fold_batchnorm

NORM = dict(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from their initial 0/1, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


class _Mixed(nn.Module):
    """Every case of the pattern: conv with bias → BN without affine, conv without bias → BN, a conv whose
    output also feeds a residual (must not fold), a BN on batch statistics (must not fold)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6, affine=False)
        self.b, self.bn_b = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c, self.bn_c = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)
        self.d, self.bn_d = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6, track_running_stats=False)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.bn_a(self.a(x)))
        x = F.relu(self.bn_b(self.b(x)))
        c = self.c(x)
        x = F.relu(self.bn_c(c) + c)  # two consumers of c
        x = F.relu(self.bn_d(self.d(x)))
        return self.fc(x.mean((2, 3)))


def _resnet18_shaped() -> nn.Module:
    """ResNet-18's graph (2-2-2-2 basic blocks, projection shortcuts) at widths 8-64."""
    return Classifier(CifarResNet("basic", (2, 2, 2, 2), (8, 16, 32, 64), stem_width=8), model_name="r18", **NORM)


def _timm_resnet() -> nn.Module:
    import timm

    return Classifier(timm.create_model("test_resnet", num_classes=10), model_name="test_resnet", **NORM)


#: name → (builder, pairs folded, BatchNorm layers left as they are): integers, exactly.
MODELS = {
    "resnet_tiny_cifar": (lambda: build_model("resnet_tiny_cifar", num_classes=10, in_chans=3, **NORM), 12, 0),
    "resnet18_shaped": (_resnet18_shaped, 20, 0),
    "preact": (lambda: Classifier(CifarResNet("preact", (1, 1), (8, 16), stem_width=8), model_name="p", **NORM), 2, 3),
    "bottleneck": (lambda: Classifier(CifarResNet("bottleneck", (1,), (4,), stem_width=8), model_name="b", **NORM),
                   5, 0),
    "small_cnn": (lambda: build_model("small_cnn", num_classes=10, in_chans=3, **NORM), 3, 0),
    "timm_test_resnet": (_timm_resnet, 15, 0),
    "mixed": (_Mixed, 2, 2),
}


def _build(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batchnorm(MODELS[name][0]()).to(device=device, dtype=dtype)


def _logits_and_input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with attack_mode(model):
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    return logits.detach(), grad


def _gap(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _inputs(device: torch.device, dtype: torch.dtype, n: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g).to(device=device, dtype=dtype)
    return x, torch.randint(0, 5, (n,), generator=g).to(device)


# ------------------------------------------------------------------------------- the fold itself
@pytest.mark.parametrize("name", list(MODELS))
def test_the_view_computes_the_eval_model_exactly_in_float64(name, device):
    model = _build(name, device, torch.float64)
    x, y = _inputs(device, torch.float64)
    outcome = fold_batchnorm(model, x)
    view = outcome.view
    assert isinstance(view, AttackView), outcome.reason
    assert (view.folded, view.unfolded) == MODELS[name][1:]
    logits, grad = _logits_and_input_grad(view, x, y)
    want_logits, want_grad = _logits_and_input_grad(model, x, y)
    assert _gap(logits, want_logits) < 1e-9
    assert _gap(grad, want_grad) < 1e-9


@pytest.mark.parametrize("name", ["resnet_tiny_cifar", "resnet18_shaped", "timm_test_resnet", "mixed"])
def test_the_view_matches_the_eval_model_in_float32(name, device):
    model = _build(name, device)
    x, y = _inputs(device, torch.float32)
    view = fold_batchnorm(model).view
    logits, grad = _logits_and_input_grad(view, x, y)
    want_logits, want_grad = _logits_and_input_grad(model, x, y)
    assert _gap(logits, want_logits) < 1e-4
    assert float((grad - want_grad).norm() / want_grad.norm()) < 1e-3


def test_only_the_foldable_pairs_fold():
    """The conv feeding a residual too and the BN on batch statistics keep their own modules in the view."""
    model = _build("mixed", torch.device("cpu"))
    view = fold_batchnorm(model).view
    called = {n.target for n in view.graph_module.graph.nodes if n.op == "call_module"}
    assert {"c", "bn_c", "d", "bn_d", "fc"} <= called
    assert not called & {"a", "bn_a", "b", "bn_b"}
    # the unfolded modules are the live model's own objects, not copies
    assert view.graph_module.get_submodule("bn_c") is model.bn_c and view.graph_module.fc is model.fc


# ---------------------------------------------------------------------- never stale, never saved
def test_refresh_follows_an_optimizer_step_and_new_running_statistics(device):
    model = _build("resnet_tiny_cifar", device)
    x, y = _inputs(device, torch.float32, n=8)
    view = fold_batchnorm(model).view
    before, _ = _logits_and_input_grad(model, x, y)
    model.train()  # one training step: weights move, running statistics move
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    now, _ = _logits_and_input_grad(model, x, y)
    assert _gap(now, before) > 1e-2  # the step changed the model ...
    stale, _ = _logits_and_input_grad(view, x, y)
    assert _gap(stale, now) > 1e-3  # ... so a view that is not refreshed is wrong (the test can fail)
    view.refresh()
    fresh, _ = _logits_and_input_grad(view, x, y)
    assert _gap(fresh, now) < 1e-4
    assert model.training  # the attack-mode passes gave every module its mode back


def test_refresh_picks_up_replaced_buffers_and_a_dtype_change():
    """``model.to(...)`` replaces buffers (the normalisation's mean/std, running statistics): the view follows."""
    model = _build("resnet_tiny_cifar", torch.device("cpu"))
    view = fold_batchnorm(model).view
    model.normalize.mean = torch.full_like(model.normalize.mean, 0.1)  # a new tensor object
    model.to(torch.float64)
    view.refresh()
    x, y = _inputs(torch.device("cpu"), torch.float64)
    logits, _ = _logits_and_input_grad(view, x, y)
    want, _ = _logits_and_input_grad(model, x, y)
    assert logits.dtype == torch.float64 and _gap(logits, want) < 1e-9


def test_the_view_is_no_part_of_the_model_and_takes_no_weight_gradients():
    model = _build("resnet_tiny_cifar", torch.device("cpu"))
    keys = list(model.state_dict())
    view = fold_batchnorm(model).view
    assert list(model.state_dict()) == keys
    assert all(m is not view and not isinstance(m, AttackView) for m in model.modules())
    assert all(not b.requires_grad for b in view.buffers())
    # folded weights are buffers: only the unfolded live parameters remain (the last Linear)
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.net.fc.parameters()}
    x, y = _inputs(torch.device("cpu"), torch.float32)
    _logits_and_input_grad(view, x, y)
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())


def test_train_mode_is_never_folded():
    model = _build("resnet_tiny_cifar", torch.device("cpu"))
    view = fold_batchnorm(model).view
    x, _ = _inputs(torch.device("cpu"), torch.float32)
    view.train()
    with pytest.raises(RuntimeError, match="eval-mode model"):
        view(x)


# ---------------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("norm,eps,alpha", [("l2", 0.5, 0.1), ("linf", 8 / 255, 2 / 255)])
def test_pgd_on_the_view_is_pgd_on_the_model(norm, eps, alpha, device):
    model = _build("resnet18_shaped", device)
    x, y = _inputs(device, torch.float32, n=4)
    view = fold_batchnorm(model).view
    params = PGDParams(norm=norm, eps=eps, alpha=alpha, steps=5)
    torch.manual_seed(3)
    want = pgd(model, x, y, params)
    torch.manual_seed(3)
    got = pgd(view, x, y, params)
    if norm == "l2":  # continuous in the gradient: round-off stays round-off
        assert float((got - want).abs().max()) < 1e-5
    else:  # sign steps: a gradient entry within round-off of 0 may flip one pixel's step
        assert float((got != want).float().mean()) < 0.01
        with torch.no_grad():
            assert _gap(F.cross_entropy(model.eval()(got), y)[None], F.cross_entropy(model(want), y)[None]) < 1e-3


def test_trades_kl_on_the_view_is_trades_kl_on_the_model_in_float64():
    model = _build("resnet_tiny_cifar", torch.device("cpu"), torch.float64)
    x, y = _inputs(torch.device("cpu"), torch.float64, n=4)
    view = fold_batchnorm(model).view
    params = TradesKLParams(eps=8 / 255, alpha=2 / 255, steps=3)
    torch.manual_seed(3)
    want = trades_kl(model, x, y, params)
    torch.manual_seed(3)
    assert float((trades_kl(view, x, y, params) - want).abs().max()) < 1e-9


# ------------------------------------------------------------------------------ fallbacks
class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: fx cannot trace it
            x = -x
        return self.bn(self.conv(x)).mean((1, 2, 3))


class _Stateful(nn.Module):
    """Traces fine but computes something else afterwards (Python state baked into the trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.calls = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), 0

    def forward(self, x):
        self.calls += 1
        return self.bn(self.conv(x)).flatten(1) * self.calls


def test_models_that_cannot_be_folded_come_back_with_the_reason():
    x = torch.rand(2, 3, 8, 8)
    outcome = fold_batchnorm(_DataDependent())
    assert outcome.view is None and outcome.reason.startswith("torch.fx cannot trace _DataDependent (TraceError")
    plain = build_model("small_cnn", num_classes=4, in_chans=3, norm=False, **NORM)
    outcome = fold_batchnorm(plain)
    assert outcome.view is None and "nothing to fold" in outcome.reason
    outcome = fold_batchnorm(_Stateful(), x)
    assert outcome.view is None and "differ from the model's" in outcome.reason
    once = _Stateful()
    once.forward = lambda x: _Stateful.forward(once, x) if once.calls == 0 else 1 / 0  # traces, then fails
    outcome = fold_batchnorm(once, x)
    assert outcome.view is None and outcome.reason.startswith("the folded view of _Stateful does not run "
                                                              "(ZeroDivisionError")


def test_setup_falls_back_with_one_line_and_never_raises():
    from types import SimpleNamespace

    from advtrain.train.folded import fold_wanted, setup_attack_model

    cpu = torch.device("cpu")
    assert not fold_wanted("auto", cpu) and fold_wanted("auto", torch.device("cuda")) and fold_wanted(True, cpu)
    adversarial = SimpleNamespace(attack=object(), attack_on_view=True)
    kwargs = dict(compile_setting=False, image_shape=(3, 8, 8), on_compile_fallback=print)
    off = setup_attack_model(_build("small_cnn", cpu), adversarial, "auto", cpu, **kwargs)
    assert off.refreshed() is None and off.message is None  # auto on a CPU: the path of before, silently
    failed = setup_attack_model(_DataDependent(), adversarial, True, cpu, **kwargs)
    assert failed.refreshed() is None and failed.fell_back
    assert failed.message.startswith("train.fold_bn=true: torch.fx cannot trace _DataDependent")
    assert failed.message.endswith("the attack runs on the model itself")
    perceptual = setup_attack_model(_build("small_cnn", cpu), SimpleNamespace(attack=object(), attack_on_view=False),
                                    True, cpu, **kwargs)
    assert perceptual.refreshed() is None and "reads the model's own layers" in perceptual.message
    on = setup_attack_model(_build("small_cnn", cpu), adversarial, True, cpu, **kwargs)
    assert isinstance(on.refreshed(), AttackView) and not on.fell_back
    assert on.message.startswith("train.fold_bn=true: folded 3 BatchNorm layers into their convolutions")


# ------------------------------------------------------------------------------ the training loop
def _trainer(tmp_path, objective: str = "adversarial", **train):
    from advtrain.config.validate import validate
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    recipe = validate({
        "name": "fold", "device": "cpu", "precision": "fp32",
        "data": {"name": "synthetic", "n_train": 32, "n_test": 8, "num_classes": 4, "image_size": 8, "channels": 3,
                 "batch_size": 16, "val_fraction": 0.0, "augment": "none"},
        "model": {"name": "small_cnn"}, "objective": {"name": objective},
        "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 2},
        "selector": {"name": "gradmatch", "fraction": 0.5}, "schedule": {"epochs": 2, "warm_start_epochs": 1},
        "optim": {"name": "sgd", "lr": 0.05}, "train": train,
        "eval": {"attacks": ["clean"], "n_examples": 8}, "output": {"dir": str(tmp_path / "run")}})
    return Trainer(recipe, SilentReporter())


@pytest.mark.parametrize("objective", ["adversarial", "trades"])
def test_the_training_and_selection_attacks_run_on_the_refreshed_view(tmp_path, objective):
    trainer = _trainer(tmp_path, objective, fold_bn=True)
    view = trainer.attack_model.view
    assert isinstance(view, AttackView) and not isinstance(trainer.train_model, AttackView)
    seen: list[tuple[nn.Module, float]] = []
    objectives = {id(trainer.objective): trainer.objective, id(trainer.parts.selection_objective):
                  trainer.parts.selection_objective}
    for obj in objectives.values():
        attack = obj.attack

        def spy(model, x, y, attack=attack):
            # what the view computes at this moment, against the live model in eval mode
            probe = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
            with torch.no_grad(), attack_mode(trainer.model):
                seen.append((model, _gap(model(probe), trainer.model(probe))))
            return attack(model, x, y)

        obj.attack = spy
    stats = trainer.model.net.features[1].running_mean.clone()
    trainer.train_epoch(0, "full")
    trainer.select(1)
    assert len(seen) == 4 and all(model is view for model, _ in seen)  # two training steps, two selection batches
    assert all(gap < 1e-5 for _, gap in seen)  # refreshed before every attack: never the weights of a step before
    assert not torch.equal(trainer.model.net.features[1].running_mean, stats)  # the loss itself ran in train mode


def test_fold_bn_false_and_auto_on_a_cpu_attack_the_model_itself(tmp_path):
    for setting in (False, "auto"):
        trainer = _trainer(tmp_path / str(setting), fold_bn=setting)
        assert trainer.attack_model.view is None and trainer.attack_model.refreshed() is None


def test_a_folded_run_trains_resumes_and_saves_the_same_checkpoint_keys(cli, tiny_recipe, tmp_path):
    from conftest import plain
    from safetensors import safe_open

    def tensors(path):
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}

    run = ["schedule.epochs=2", "train.max_steps_per_epoch=1", "selector=gradmatch", "schedule.warm_start_epochs=1",
           "eval.attacks=[clean]", "eval.n_examples=8"]
    code, out = cli("run", tiny_recipe, *run, "train.fold_bn=true", "output.keep_every=1")
    assert code == 0, out
    assert "train.fold_bn=true: folded 3 BatchNorm layers into their convolutions for the attack" in plain(out)
    code, out = cli("run", tiny_recipe, *run, "train.fold_bn=true", "output.dir=runs/resumed",
                    "--resume-from", tmp_path / "runs/tiny/epoch_001.safetensors")
    assert code == 0, out
    code, out = cli("run", tiny_recipe, *run, "train.fold_bn=false", "output.dir=runs/plain")
    assert code == 0, out
    folded = tensors(tmp_path / "runs/tiny/last.safetensors")
    resumed = tensors(tmp_path / "runs/resumed/last.safetensors")
    assert folded.keys() == tensors(tmp_path / "runs/plain/last.safetensors").keys() == resumed.keys()
    for key in (k for k in folded if k.startswith("model.")):  # the resume replays the folded run exactly
        assert torch.equal(folded[key], resumed[key]), key


@pytest.mark.slow
def test_the_compiled_view_follows_the_live_weights(request):
    """train.compile: the compiled view reads its buffers in place, so a refresh needs no recompilation (~15 s)."""
    if request.config.getoption("--device") != "cpu":
        pytest.skip("compiles on the CPU (.ci/run); on CUDA bench/throughput.py --compile on times the compiled view")
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from advtrain.train.folded import setup_attack_model

    model = _build("resnet_tiny_cifar", torch.device("cpu"))
    attack_model = setup_attack_model(model, SimpleNamespace(attack=pgd, attack_on_view=True), True,
                                      torch.device("cpu"), compile_setting=True, image_shape=(3, 16, 16),
                                      on_compile_fallback=pytest.fail)
    x, y = _inputs(torch.device("cpu"), torch.float32, n=4)
    params = PGDParams(norm="l2", eps=0.5, alpha=0.1, steps=2)
    counters.clear()
    for _ in range(2):
        torch.manual_seed(3)
        want = pgd(model, x, y, params)
        torch.manual_seed(3)
        assert float((pgd(attack_model.refreshed(), x, y, params) - want).abs().max()) < 1e-5
        with torch.no_grad():  # an optimizer step's worth of change, before the next refresh
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
            model.net.bn1.running_mean.add_(0.1)
    compiled = attack_model.compiled
    assert compiled.fallback is None and compiled.warmup_s > 0
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, never again
