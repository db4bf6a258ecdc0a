"""CUDA paths (bf16 autocast, channels_last, data resident on the GPU); skipped without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_tiny_run_on_cuda(cli, tiny_recipe, tmp_path, precision):
    code, out = cli("run", tiny_recipe, "device=cuda", f"precision={precision}", "schedule.epochs=2",
                    "selector=gradmatch", "schedule.warm_start_epochs=1", "schedule.select_every=1")
    assert code == 0, out
    metrics = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert all(m["train_loss"] == m["train_loss"] for m in metrics)  # finite, not NaN
    for m in metrics:  # the epoch split, each switch of part synchronised with the GPU
        assert min(m["timing"].values()) >= 0 and sum(m["timing"].values()) == pytest.approx(m["epoch_time"], abs=1e-9)


def test_source_on_device_loads_the_same_batches():
    from advtrain.data import ArraySource

    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    source = ArraySource(images, torch.arange(10))
    idx = torch.tensor([3, 1, 7])
    assert torch.equal(source.to_device("cuda").load(idx, "cuda").cpu(), source.load(idx))


def _cuda_recipe(tmp_path, objective: str, *, name: str = "graphs", precision: str = "fp32", augment: str = "none",
                 attack_steps: int = 3, **train):
    """A validated one-epoch CUDA recipe: small_cnn on 64 synthetic 8×8 images, PGD, full data."""
    from advtrain.config.validate import validate

    return validate({
        "name": name, "device": "cuda", "precision": precision,
        "data": {"name": "synthetic", "n_train": 64, "n_test": 8, "num_classes": 4, "image_size": 8, "channels": 3,
                 "batch_size": 16, "val_fraction": 0.0, "augment": augment},
        "model": {"name": "small_cnn"}, "objective": {"name": objective},
        "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": attack_steps},
        "selector": {"name": "full"}, "schedule": {"epochs": 1}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": train, "eval": {"attacks": ["clean"], "n_examples": 8}, "output": {"dir": str(tmp_path / "run")}})


@pytest.mark.parametrize("objective", ["adversarial", "trades"])
def test_training_steps_make_no_host_sync(tmp_path, objective):
    """Between two statistics reads the hot loop never waits for the GPU (CUDA's sync debug mode errors)."""
    from advtrain.data import iterate_batches
    from advtrain.runtime.seeding import generator
    from advtrain.train.loop import Trainer
    from advtrain.train.step_monitor import StepMonitor
    from advtrain.ui.console import SilentReporter

    recipe = _cuda_recipe(tmp_path, objective, name="sync", precision="bf16", augment="crop_flip", attack_steps=2)
    trainer = Trainer(recipe, SilentReporter())
    trainer.train_epoch(0, "full")  # warm-up: allocator, cuDNN autotuning
    weights = torch.rand(64, device="cuda")
    monitor = StepMonitor(trainer.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b, (x, y, idx) in enumerate(iterate_batches(
                trainer.data.train, torch.arange(64), 16, shuffle=True, generator=generator(3), augment="crop_flip",
                padding=trainer.data.padding, device=trainer.device)):
            trainer._train_step(0, b, 4, x, y, idx, weights, monitor)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    totals = monitor.read()
    assert totals.seen == 64 and totals.first_bad_batch is None


def test_eval_on_cuda_with_autoattack_stages(cli, tiny_recipe, tmp_path):
    """`advtrain eval` on CUDA: the checkpoint's ε by default, PGD and a reduced AutoAttack stage by stage."""
    code, out = cli("run", tiny_recipe, "device=cuda", "schedule.epochs=1")
    assert code == 0, out
    code, out = cli("eval", "runs/tiny/last.safetensors", "--device", "cuda", "--attack", "pgd10,aa", "--steps", "3",
                    "--n-examples", "16", "--out", "ev")
    assert code == 0, out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n_examples"] == 16 and report["device"].startswith("cuda")
    assert set(report["robust_acc"]) >= {"pgd10", "aa"} and report["eps_source"]


@pytest.mark.parametrize("objective", ["adversarial", "trades"])
def test_cuda_graphs_and_the_fused_update_train_like_eager(tmp_path, objective):
    """train.compile_mode=reduce-overhead (the attack's forward + autograd.grad per step, TRADES's two
    forwards before one backward) keeps its CUDA graphs and trains as eager does, up to compile's rounding."""
    from advtrain.train.loop import Trainer
    from advtrain.ui.console import SilentReporter

    losses = {}
    for name, train in (("eager", {"compile": False, "log_every": 100}),
                        ("graphs", {"compile": True, "compile_mode": "reduce-overhead", "log_every": 100})):
        trainer = Trainer(_cuda_recipe(tmp_path / name, objective, **train), SilentReporter())
        assert trainer.optimizer.param_groups[0]["fused"] is True  # optim.fused=auto on CUDA
        losses[name] = []
        for epoch in range(3):
            torch.manual_seed(epoch)  # the attack's random starts, as the loop seeds each epoch
            losses[name].append(trainer.train_epoch(epoch, "full")["train_loss"])
        if name == "graphs":
            assert trainer.train_model.fallback is None and trainer._compile_info()["mode"] == "reduce-overhead"
    # The first epoch agrees closely; later ones drift with compile's rounding (on a CPU, fp32: 4e-5, then
    # up to 4e-3). Graphs replaying stale outputs would instead break the attack from the first steps on.
    assert losses["graphs"][0] == pytest.approx(losses["eager"][0], rel=5e-3)
    assert losses["graphs"] == pytest.approx(losses["eager"], rel=3e-2)
