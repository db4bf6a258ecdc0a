"""The fast path, proven on whatever device the suite runs on (cpu in `make test`, cuda in the GPU check).

Each test takes the ``device`` fixture (``pytest --device cuda``): bf16 autocast in training and
attack steps with fp32 evaluation, channels_last, the on-device data source and augmentation,
``train.compile``, the fp16 gradient-scaler branch, and the device-side step statistics.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from advtrain.attacks.pgd import PGDParams, pgd
from advtrain.config.validate import validate
from advtrain.data import ArraySource, iterate_batches
from advtrain.data.source import to_unit_float
from advtrain.io import checkpoint as ckpt_io
from advtrain.models import build_model
from advtrain.runtime.device import autocast
from advtrain.runtime.seeding import generator
from advtrain.train.loop import Trainer
from advtrain.train.step_monitor import StepMonitor, grads_finite
from advtrain.ui.console import SilentReporter


def tiny_recipe(tmp_path: Path, device: torch.device, **sections) -> dict:
    recipe = {
        "name": "dev", "seed": 0, "device": str(device), "precision": "fp32",
        "data": {"name": "synthetic", "n_train": 64, "n_test": 16, "num_classes": 4, "image_size": 8,
                 "channels": 3, "batch_size": 16, "val_fraction": 0.0, "augment": "crop_flip"},
        "model": {"name": "small_cnn"}, "objective": {"name": "adversarial"},
        "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 2},
        "selector": {"name": "full"}, "schedule": {"epochs": 1}, "optim": {"name": "sgd", "lr": 0.05},
        "eval": {"attacks": ["clean"], "n_examples": 8}, "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def test_uint8_to_float_is_bit_identical_on_every_device(device):
    images = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 1, 16, 16)
    reference = images.float() / 255  # the CPU's correctly rounded division
    assert torch.equal(to_unit_float(images.to(device)).cpu(), reference)


def test_on_device_source_gives_the_same_batches_as_the_default_source(device):
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=generator(1))
    source = ArraySource(images, torch.arange(50) % 5)
    kwargs = dict(batch_size=16, shuffle=True, augment="crop_flip", padding=2, device=device)
    default = list(iterate_batches(source, torch.arange(50), generator=generator(7), **kwargs))
    resident = list(iterate_batches(source.to_device(device), torch.arange(50), generator=generator(7), **kwargs))
    assert len(default) == len(resident) == 4
    for (x1, y1, i1), (x2, y2, i2) in zip(default, resident, strict=True):
        assert x2.device.type == device.type and torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_under_bf16_autocast_stays_in_the_ball_and_returns_fp32(device, norm, eps):
    model = build_model("small_cnn", num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = model.to(device).to(memory_format=torch.channels_last)
    x = torch.rand(8, 3, 8, 8, device=device)
    y = torch.randint(0, 4, (8,), device=device)
    params = PGDParams(norm=norm, eps=eps, alpha=eps / 4, steps=3)
    with autocast(device, torch.bfloat16):
        x_adv = pgd(model, x, y, params)
    assert x_adv.dtype == torch.float32 and x_adv.device.type == device.type
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.requires_grad for p in model.parameters())  # the attack handed the flags back


def test_bf16_channels_last_training_step_then_fp32_evaluation(device, tmp_path):
    recipe = tiny_recipe(tmp_path, device, precision="bf16", train={"channels_last": True})
    trainer = Trainer(validate(recipe), SilentReporter())
    assert trainer.amp_dtype == torch.bfloat16
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    stats = trainer.train_epoch(0, "full")
    assert stats["samples"] == 64 and 0 < stats["train_loss"] < 10
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast, not a cast
    result = trainer.evaluate_split(trainer.data.test)  # evaluation runs in fp32 whatever the training precision
    test, model = trainer.data.test, trainer.model.eval()
    with torch.no_grad():  # the same first 8 test images, scored independently in fp32
        logits = model(test.images[:8].to(trainer.device).float() / 255)
    correct = int((logits.argmax(1) == test.labels[:8].to(trainer.device)).sum())
    assert result.n_examples == 8 and result.clean_acc == pytest.approx(correct / 8, rel=1e-6)


@pytest.mark.slow  # inductor compiles for ~25 s on 2 CPU cores; bench/gpu_check.sh runs it on CUDA (-m "")
def test_compiled_training_matches_the_eager_loss(device, tmp_path):
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor needs a C++ compiler on the CPU; none is installed")
    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        recipe = tiny_recipe(tmp_path / str(compiled), device, data={"n_train": 32, "augment": "none"},
                             train={"compile": compiled}, attack={"steps": 1})
        trainer = Trainer(validate(recipe), SilentReporter())
        losses[compiled] = trainer.train_epoch(0, "full")["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)


def test_fp16_grad_scaler_branch_trains_and_round_trips_its_state(device, tmp_path):
    """The gradient-scaler branch (fp16) on this device, and its state through a checkpoint."""
    recipe = validate(tiny_recipe(tmp_path, device))
    trainer = Trainer(recipe, SilentReporter())
    trainer.amp_dtype = torch.float16  # precision=fp16 is refused off CUDA; drive the branch directly
    trainer.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, growth_interval=1, enabled=True)
    stats = trainer.train_epoch(0, "full")
    assert stats["samples"] == 64 and stats["train_loss"] == stats["train_loss"]
    scale = trainer.scaler.get_scale()
    assert scale != 2.0**10  # it grew after finite steps (growth_interval=1) or backed off on overflow
    path = tmp_path / "ck.safetensors"
    ckpt_io.save(path, trainer.snapshot())
    fresh = Trainer(recipe, SilentReporter())
    fresh.scaler = torch.amp.GradScaler(device.type)
    fresh.load(path, force=True)
    assert fresh.scaler.get_scale() == scale
    assert fresh.scaler.state_dict()["_growth_tracker"] == trainer.scaler.state_dict()["_growth_tracker"]


def test_step_monitor_sums_on_device_and_finds_the_first_bad_step(device):
    monitor = StepMonitor(device, loss_sum=1.5, correct=2, seen=3)
    one = torch.ones((), device=device)
    monitor.record(3, torch.tensor(0.5, device=device), 2 * one, 4, grads_finite=one.bool())
    monitor.record(4, torch.tensor(float("nan"), device=device), one, 4, grads_finite=one.bool())
    monitor.record(5, torch.tensor(0.25, device=device), one, 4, grads_finite=~one.bool())
    totals = monitor.read()
    assert totals.seen == 15 and totals.correct == 6
    assert totals.first_bad_batch == 4 and totals.bad_kind == "loss" and not totals.stop


def test_grads_finite_sees_one_bad_entry(device):
    model = torch.nn.Linear(3, 2).to(device)
    model(torch.ones(1, 3, device=device)).sum().backward()
    assert bool(grads_finite(model))
    model.weight.grad[0, 1] = float("inf")
    assert not bool(grads_finite(model))


def test_divergence_inside_a_log_window_keeps_the_last_finite_state(cli, tiny_recipe, tmp_path):
    """Statistics are read every 3 batches: the run stops at the read after the bad batch and saves
    the state of the read before it (finite), naming the first bad batch."""
    code, out = cli("run", tiny_recipe, "schedule.epochs=2", "lr_schedule.gamma=1e30", "train.log_every=3",
                    "eval.every=0")
    assert code == 2, out
    assert "non-finite" in out and "at epoch 2, batch" in out
    saved = load_file(str(tmp_path / "runs/tiny/last.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in saved.items() if k.startswith("model."))
    in_epoch = (ckpt_io.load(tmp_path / "runs/tiny/last.safetensors").meta.get("extra") or {}).get("in_epoch")
    if in_epoch:  # saved at a read inside epoch 2 (else the end of epoch 1 was the last finite state)
        assert in_epoch["epoch"] == 1 and in_epoch["batch"] % 3 == 0
