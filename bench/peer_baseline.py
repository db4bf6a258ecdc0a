"""advtrain's PGD-AT step vs the loop a user would otherwise write, in the same run.

    python bench/peer_baseline.py                          # CPU-small defaults
    python bench/peer_baseline.py --device cuda --model resnet18_cifar --batch-size 512 --steps 50

Baselines, written here in the style of the published reference scripts (fp32, a torch DataLoader
over a dataset that augments each sample with torchvision transforms, model.eval() during the
attack, one optimizer step per batch, no other tricks):
  * ``plain``: a hand-written PGD-10 attack loop;
  * ``torchattacks``: the same loop with ``torchattacks.PGD`` as the attack step.
Same model, data, batch size, ε = 8/255, α = 2/255, 10 steps for all. Reports img/s (median of
repeats) and advtrain / baseline ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import add_results_arg, command_line, gpu_peak_memory_gib, gpu_peak_memory_reset, machine, write_result
from throughput import build_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from advtrain.models import build_model

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


class AugmentedImages(Dataset):
    """Float images with per-sample RandomCrop(32, 4) + RandomHorizontalFlip, as reference scripts do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(STEPS):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * grad.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def baseline_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, attack, device) -> int:
    seen = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        model.eval()
        x_adv = attack(model, x, y)
        model.train()
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def timed(fn, repeats: int, device: torch.device) -> tuple[float, int]:
    fn()  # warm-up
    times, seen = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        seen = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), seen


def measure_advtrain(args: argparse.Namespace) -> tuple[dict, torch.Tensor, torch.Tensor, tuple, tuple, torch.device]:
    """advtrain's own PGD-10 step on the same data; returns its row and the data for the baselines."""
    targs = argparse.Namespace(device=args.device, batch_size=args.batch_size, steps=args.steps,
                               precision=args.precision)
    trainer = build_trainer(args.model, "pgd10", targs)
    source = trainer.data.train
    images, labels = source.images.cpu().float() / 255, source.labels.cpu()
    epoch = iter(range(1, 10_000))
    gpu_peak_memory_reset()
    sec, seen = timed(lambda: trainer.train_epoch(next(epoch), "full")["samples"], args.repeats, trainer.device)
    row = {"img_per_s": seen / sec, "median_seconds": sec,
           "precision": str(trainer.amp_dtype or "fp32").replace("torch.", ""), "peak_gpu_gib": gpu_peak_memory_gib()}
    return row, images, labels, trainer.data.mean, trainer.data.std, trainer.device


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--model", default="resnet18_cifar" if cuda else "resnet_tiny_cifar")
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 64)
    parser.add_argument("--steps", type=int, default=50 if cuda else 3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    add_results_arg(parser)
    args = parser.parse_args()
    rows = {}
    advtrain_row, images, labels, mean, std, device = measure_advtrain(args)
    rows["advtrain"] = advtrain_row  # the trainer is gone: its memory is not the baselines' peak
    loader = DataLoader(AugmentedImages(images, labels), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    for name in ("plain", "torchattacks"):
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=10, in_chans=3, mean=mean, std=std).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        if name == "plain":
            attack = plain_pgd
        else:
            import torchattacks

            pgd = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)

            def attack(m, x, y, pgd=pgd):
                return pgd(x, y)
        gpu_peak_memory_reset()
        sec, seen = timed(lambda m=model, o=optimizer, a=attack: baseline_epoch(m, loader, o, a, device),
                          args.repeats, device)
        rows[name] = {"img_per_s": seen / sec, "median_seconds": sec, "precision": "fp32",
                      "peak_gpu_gib": gpu_peak_memory_gib()}
    for row in rows.values():
        row["advtrain_speedup"] = rows["advtrain"]["img_per_s"] / row["img_per_s"]
    for name, row in rows.items():
        print(f"{name:>13}: {row['img_per_s']:8.1f} img/s  (advtrain ×{row['advtrain_speedup']:.2f})", flush=True)
    lines = ["# PGD-10 adversarial training step: advtrain vs a reference-style loop", "",
             f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Model {args.model}, batch {args.batch_size}, {args.steps} batches per pass, median of {args.repeats}; "
             f"ε 8/255, α 2/255, 10 steps; synthetic 32×32 data.", "",
             "| loop | precision | img/s | advtrain speed-up | peak GPU GiB |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['precision']} | {v['img_per_s']:.1f} | {v['advtrain_speedup']:.2f}× | "
              f"{'–' if v['peak_gpu_gib'] is None else format(v['peak_gpu_gib'], '.2f')} |" for k, v in rows.items()]
    write_result(f"peer_baseline_{device.type}", {"machine": machine(), "command": command_line(),
                                                  "settings": {**vars(args), "results": str(args.results)},
                                                  "rows": rows}, "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
