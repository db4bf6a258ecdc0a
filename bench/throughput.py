"""Training throughput (img/s) of advtrain's real training step per objective and model.

    python bench/throughput.py                       # CPU-small defaults (a few minutes)
    python bench/throughput.py --device cuda --models resnet18_cifar,small_cnn --batch-size 512 --steps 50

Builds a Trainer on synthetic 32×32 data held in memory (no disk I/O), runs one warm-up pass, then
times ``Trainer.train_epoch`` (attack + forward + backward + step, exactly what ``advtrain run``
does) ``--repeats`` times and reports the median images per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import LOCAL, command_line, machine, write_result

from advtrain.config.load import validate
from advtrain.train.loop import Trainer
from advtrain.ui.console import SilentReporter

OBJECTIVES = {
    "clean": {"objective": {"name": "clean"}, "attack": None},
    "fgsm": {"objective": {"name": "adversarial"},
             "attack": {"name": "fgsm", "eps": "8/255", "alpha": "10/255"}},
    "pgd10": {"objective": {"name": "adversarial"},
              "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 10}},
    "trades10": {"objective": {"name": "trades", "beta": 6.0},
                 "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 10}},
}


def build_trainer(model: str, objective: str, args: argparse.Namespace) -> Trainer:
    n = args.batch_size * args.steps
    recipe = {
        "name": "throughput", "seed": 0, "device": args.device, "precision": args.precision,
        "data": {"name": "synthetic", "n_train": n, "n_test": 16, "num_classes": 10, "image_size": 32,
                 "channels": 3, "batch_size": args.batch_size, "val_fraction": 0.0, "augment": "crop_flip"},
        "model": {"name": model}, "selector": {"name": "full"}, "schedule": {"epochs": 1},
        "optim": {"name": "sgd", "lr": 0.01}, "train": {"compile": args.compile},
        "eval": {"attacks": ["clean"], "n_examples": 1}, "output": {"dir": str(LOCAL / "bench_throughput")},
        **OBJECTIVES[objective],
    }
    return Trainer(validate(recipe), SilentReporter())


def measure(model: str, objective: str, args: argparse.Namespace) -> dict:
    trainer = build_trainer(model, objective, args)
    trainer.train_epoch(0, "full")  # warm-up: cuDNN autotuning, compilation, allocator
    times = []
    for repeat in range(args.repeats):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = trainer.train_epoch(repeat + 1, "full")
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": model, "objective": objective, "images": stats["samples"], "median_seconds": seconds,
            "img_per_s": stats["samples"] / seconds, "all_seconds": times}


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", default="resnet18_cifar,small_cnn" if cuda else "resnet_tiny_cifar,small_cnn")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 64)
    parser.add_argument("--steps", type=int, default=50 if cuda else 3, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    rows = [measure(m, o, args) for m in args.models.split(",") for o in args.objectives.split(",")]
    for row in rows:
        clean = next(r for r in rows if r["model"] == row["model"] and r["objective"] == "clean")
        row["cost_vs_clean"] = clean["img_per_s"] / row["img_per_s"]
        print(f"{row['model']:>18} {row['objective']:>9}: {row['img_per_s']:9.1f} img/s", flush=True)
    lines = ["# Training throughput", "", f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Batch {args.batch_size}, {args.steps} batches per pass, median of {args.repeats} passes, "
             f"precision {args.precision}, device {args.device}; synthetic 32×32 data in memory.", "",
             "| model | objective | img/s | × cost of clean |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['objective']} | {r['img_per_s']:.1f} | {r['cost_vs_clean']:.1f} |" for r in rows]
    write_result(f"throughput_{args.device.split(':')[0]}", {"machine": machine(), "command": command_line(),
                                                             "settings": vars(args), "rows": rows},
                 "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
