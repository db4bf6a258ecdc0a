"""advtrain's PGD-AT step vs the loops a user would otherwise write, in the same run.

    python bench/peer_baseline.py                          # CPU-small defaults
    python bench/peer_baseline.py --device cuda --model resnet18_cifar --batch-size 512 --steps 50
    python bench/peer_baseline.py --device cuda --loops bf16,compiled,plain --set optim.fused=true

The peer loops are written here in the style of the published reference scripts (a torch
DataLoader over a dataset that augments each sample with torchvision transforms, model.eval()
during the attack, a hand-written PGD on a perturbation ``delta``, one optimizer step per batch):
  * ``plain``: fp32, as the ACS and CORDS reference code trains;
  * ``bf16``: what a competent user writes today: the same loop under ``torch.autocast`` in
    bfloat16 (attack and training step), model and batches in channels_last, cuDNN autotuning on
    (bf16 needs no gradient scaler);
  * ``compiled``: the ``bf16`` loop with ``torch.compile(model)`` (default mode);
  * ``torchattacks``: the fp32 loop with ``torchattacks.PGD`` as the attack.
Same model, data, batch size, ε = 8/255, α = 2/255, 10 steps for all. advtrain runs its own step
(``Trainer.train_epoch``) as a user gets it: ``train.compile=auto`` (compiled on CUDA) unless
``--advtrain-compile`` says otherwise, plus any ``--set`` overrides (levers). Reports img/s
(median of repeats after a warm-up pass that includes compilation) and advtrain / loop ratios;
issue 22's targets: ≥ 1.5× the bf16 loop, ≥ 1.1× the compiled one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import add_results_arg, command_line, gpu_peak_memory_gib, gpu_peak_memory_reset, machine, write_result
from throughput import build_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from advtrain.errors import RecipeError
from advtrain.models import build_model

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
LOOPS = ("plain", "bf16", "compiled", "torchattacks")
#: Issue 22's targets: advtrain / loop.
TARGETS = {"bf16": 1.5, "compiled": 1.1}


class AugmentedImages(Dataset):
    """Float images with per-sample RandomCrop(32, 4) + RandomHorizontalFlip, as reference scripts do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """ℓ∞ PGD from a random start; ``precision`` wraps each forward (autocast in the bf16 loops)."""
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(STEPS):
        delta.requires_grad_(True)
        with precision():
            loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * grad.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


@contextlib.contextmanager
def _nothing():
    yield


class PeerLoop:
    """One reference-style PGD-AT loop: its model, optimizer, attack and precision setting."""

    def __init__(self, name: str, model: nn.Module, device: torch.device) -> None:
        self.name, self.device = name, device
        mixed = name in ("bf16", "compiled")
        self.memory_format = torch.channels_last if mixed else torch.contiguous_format
        model = model.to(device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.model = torch.compile(model) if name == "compiled" else model
        self.precision = "bf16" if mixed else "fp32"
        if mixed:
            torch.backends.cudnn.benchmark = True
            self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            self.autocast = _nothing
        if name == "torchattacks":
            import torchattacks

            pgd = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
            self.attack = lambda m, x, y: pgd(x, y)
        else:
            self.attack = lambda m, x, y: plain_pgd(m, x, y, self.autocast)

    def epoch(self, loader: DataLoader) -> int:
        seen = 0
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            self.model.eval()
            x_adv = self.attack(self.model, x, y)
            self.model.train()
            with self.autocast():
                loss = F.cross_entropy(self.model(x_adv), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            seen += len(y)
        return seen


def timed(fn: Callable[[], int], repeats: int, device: torch.device) -> tuple[float, int, float]:
    """(median seconds, images per pass, warm-up seconds) of ``repeats`` passes after one warm-up."""
    start = time.perf_counter()
    fn()  # warm-up: cuDNN autotuning, compilation, DataLoader workers
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    times, seen = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        seen = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), seen, warmup


def measure_advtrain(args: argparse.Namespace) -> tuple[dict, torch.Tensor, torch.Tensor, tuple, tuple, torch.device]:
    """advtrain's own PGD-10 step on the same data; returns its row and the data for the baselines."""
    targs = argparse.Namespace(device=args.device, batch_size=args.batch_size, steps=args.steps,
                               precision=args.precision, set=args.set)
    compile = {"auto": "auto", "on": True, "off": False}[args.advtrain_compile]
    trainer = build_trainer(args.model, "pgd10", targs, compile=compile)
    source = trainer.data.train
    images, labels = source.images.cpu().float() / 255, source.labels.cpu()
    epoch = iter(range(1, 10_000))
    gpu_peak_memory_reset()
    sec, seen, warmup = timed(lambda: trainer.train_epoch(next(epoch), "full")["samples"], args.repeats,
                              trainer.device)
    fallback = getattr(trainer.train_model, "fallback", None)
    compiled = hasattr(trainer.train_model, "fallback") and fallback is None
    row = {"img_per_s": seen / sec, "median_seconds": sec, "warmup_seconds": warmup, "compiled": compiled,
           "precision": str(trainer.amp_dtype or "fp32").replace("torch.", ""), "peak_gpu_gib": gpu_peak_memory_gib(),
           "overrides": list(args.set), "note": f"compile fell back to eager: {fallback}" if fallback else ""}
    return row, images, labels, trainer.data.mean, trainer.data.std, trainer.device


def write(rows: dict[str, dict], args: argparse.Namespace, device: torch.device) -> None:
    """The result files (rewritten after each loop: a run cut off keeps the loops it measured)."""
    base = rows["advtrain"]["img_per_s"]
    for row in rows.values():
        row["advtrain_speedup"] = base / row["img_per_s"] if row.get("img_per_s") else None
    adv = rows["advtrain"]
    how = (f"advtrain: {'compiled' if adv['compiled'] else 'eager'} ({args.advtrain_compile}), {adv['precision']}"
           + (f", overrides {', '.join(f'`{o}`' for o in adv['overrides'])}" if adv["overrides"] else ""))
    lines = ["# PGD-10 adversarial training step: advtrain vs reference-style loops", "",
             f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Model {args.model}, batch {args.batch_size}, {args.steps} batches per pass, median of {args.repeats} "
             f"after a warm-up pass; ε 8/255, α 2/255, 10 steps; synthetic 32×32 data; loops fed by a DataLoader "
             f"with {args.workers} workers and per-sample torchvision crop + flip. {how}. Targets (issue 22): "
             f"advtrain ≥ {TARGETS['bf16']}× the bf16 loop, ≥ {TARGETS['compiled']}× the compiled loop.", "",
             "| loop | precision | img/s | advtrain speed-up | target | peak GPU GiB | warm-up s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in rows.items():
        target = TARGETS.get(name)
        if v.get("img_per_s") is None:
            lines.append(f"| {name} | – | {v['status']} | – | – | – | – | {v.get('note', '')} |")
            continue
        verdict = "–" if target is None else (f"≥ {target}× " + ("met" if v["advtrain_speedup"] >= target
                                                                  else "missed"))
        peak = "–" if v["peak_gpu_gib"] is None else format(v["peak_gpu_gib"], ".2f")
        lines.append(f"| {name} | {v['precision']} | {v['img_per_s']:.1f} | {v['advtrain_speedup']:.2f}× | {verdict} | "
                     f"{peak} | {v['warmup_seconds']:.1f} | {v.get('note', '')} |")
    write_result(args.name or f"peer_baseline_{device.type}",
                 {"machine": machine(), "command": command_line(),
                  "settings": {**vars(args), "results": str(args.results)}, "targets": TARGETS, "rows": rows},
                 "\n".join(lines) + "\n", args.results)


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
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"comma list, in running order, of {', '.join(LOOPS)}")
    parser.add_argument("--advtrain-compile", default="auto", choices=["auto", "on", "off"],
                        help="train.compile of advtrain's row (auto: compiled on CUDA, as a user gets it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for advtrain's trainer (repeatable), e.g. optim.fused=true")
    parser.add_argument("--name", default=None, help="result file name (default peer_baseline_<device>)")
    add_results_arg(parser)
    args = parser.parse_args()
    loops = [name for name in args.loops.split(",") if name]
    unknown = sorted(set(loops) - set(LOOPS))
    if unknown:
        parser.error(f"--loops: unknown loop(s) {', '.join(unknown)}; choose from {', '.join(LOOPS)}")
    try:
        advtrain_row, images, labels, mean, std, device = measure_advtrain(args)
    except RecipeError as err:
        print(f"peer_baseline.py: --set refused by the recipe validator:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None
    rows = {"advtrain": advtrain_row}  # the trainer is gone: its memory is not the baselines' peak
    print(f"{'advtrain':>13}: {advtrain_row['img_per_s']:8.1f} img/s", flush=True)
    write(rows, args, device)
    loader = DataLoader(AugmentedImages(images, labels), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    for name in loops:
        torch.manual_seed(0)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            model = build_model(args.model, num_classes=10, in_chans=3, mean=mean, std=std)
            loop = PeerLoop(name, model, device)
            gpu_peak_memory_reset()
            sec, seen, warmup = timed(lambda lp=loop: lp.epoch(loader), args.repeats, device)
            rows[name] = {"img_per_s": seen / sec, "median_seconds": sec, "warmup_seconds": warmup,
                          "precision": loop.precision, "peak_gpu_gib": gpu_peak_memory_gib(), "note": ""}
        except Exception as err:  # noqa: BLE001 - one loop failing (no torchattacks, a compiler error) costs that row
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            rows[name] = {"status": "failed", "note": f"{type(err).__name__}: {text}"}
        write(rows, args, device)
        row = rows[name]
        shown = f"{row['img_per_s']:8.1f} img/s  (advtrain ×{row['advtrain_speedup']:.2f})" if row.get("img_per_s") \
            else f"failed: {row['note']}"
        print(f"{name:>13}: {shown}", flush=True)


if __name__ == "__main__":
    main()
