"""Training throughput (img/s) of advtrain's real training step per objective and model.

    python bench/throughput.py                       # CPU-small defaults (a few minutes)
    python bench/throughput.py --device cuda --models resnet18_cifar --batch-size 512 --steps 50 --compile both

Builds a Trainer on synthetic 32×32 data held in memory (no disk I/O), runs one warm-up pass, then
times ``Trainer.train_epoch`` (attack + forward + backward + step, exactly what ``advtrain run``
does) ``--repeats`` times and reports the median images per second, the peak GPU memory, and the
arithmetic rate reached: FLOPs per image are *counted* (``torch.utils.flop_counter`` over one real
training step of each objective, attack included), and on CUDA the bf16 matrix-product rate is
measured in the same run (an 8192³ product) as the ceiling.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import (
    LOCAL,
    add_results_arg,
    command_line,
    gpu_peak_memory_gib,
    gpu_peak_memory_reset,
    machine,
    write_result,
)

from advtrain.config.validate import validate
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
#: Datasheet dense bf16 rate (TFLOP/s) for reference next to the measured one.
DATASHEET_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build_trainer(model: str, objective: str, args: argparse.Namespace, *, compile: bool = False,
                  batch_size: int | None = None, steps: int | None = None) -> Trainer:
    batch_size = batch_size or args.batch_size
    n = batch_size * (steps or args.steps)
    recipe = {
        "name": "throughput", "seed": 0, "device": args.device, "precision": args.precision,
        "data": {"name": "synthetic", "n_train": n, "n_test": 16, "num_classes": 10, "image_size": 32,
                 "channels": 3, "batch_size": batch_size, "val_fraction": 0.0, "augment": "crop_flip"},
        "model": {"name": model}, "selector": {"name": "full"}, "schedule": {"epochs": 1},
        "optim": {"name": "sgd", "lr": 0.01}, "train": {"compile": compile, "log_every": 50},
        "eval": {"attacks": ["clean"], "n_examples": 1}, "output": {"dir": str(LOCAL / "bench_throughput")},
        **OBJECTIVES[objective],
    }
    return Trainer(validate(recipe), SilentReporter())


class _FlopCount:
    """Counts matrix-product and convolution FLOPs of every aten call (forward and backward).

    torch's ``FlopCounterMode`` also tracks modules with backward hooks, which refuse the attack's
    ``autograd.grad`` w.r.t. the input; its per-op FLOP formulas (``flop_registry``) are used here
    in a plain dispatch mode instead.
    """

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        class Mode(TorchDispatchMode):
            flops = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                count = flop_registry.get(func._overloadpacket)
                if count is not None:
                    self.flops += count(*args, **kwargs, out_val=out)
                return out

        return Mode()


def flops_per_image(model: str, objective: str, args: argparse.Namespace) -> float:
    """FLOPs of one training step (attack, forward, backward) per image, counted on a small batch."""
    batch = 16
    trainer = build_trainer(model, objective, args, batch_size=batch, steps=1)
    counter = _FlopCount()
    with counter:
        trainer.train_epoch(0, "full")
    return counter.flops / batch


def measure(model: str, objective: str, args: argparse.Namespace, compile: bool) -> dict:
    gpu_peak_memory_reset()
    trainer = build_trainer(model, objective, args, compile=compile)
    start = time.perf_counter()
    trainer.train_epoch(0, "full")  # warm-up: cuDNN autotuning, compilation, allocator
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
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
    return {"model": model, "objective": objective, "compile": compile,
            "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
            "images": stats["samples"], "median_seconds": seconds, "img_per_s": stats["samples"] / seconds,
            "all_seconds": times, "warmup_seconds": warmup, "peak_gpu_gib": gpu_peak_memory_gib()}


def matmul_tflops(device: str, dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 10) -> float | None:
    """The measured bf16 matrix-product ceiling on ``device`` (random data, median of events)."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", default="resnet18_cifar" if cuda else "resnet_tiny_cifar,small_cnn")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 64)
    parser.add_argument("--steps", type=int, default=50 if cuda else 3, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"],
                        help="train.compile for the timed trainers (both: one row each)")
    parser.add_argument("--name", default=None, help="result file name (default throughput_<device>)")
    add_results_arg(parser)
    args = parser.parse_args()
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    objectives = args.objectives.split(",")
    ceiling = matmul_tflops(args.device)
    rows = []
    for model in args.models.split(","):
        flops = {o: flops_per_image(model, o, args) for o in objectives}
        for compile in compiles:
            for objective in objectives:
                row = measure(model, objective, args, compile)
                row["gflop_per_image"] = flops[objective] / 1e9
                row["tflop_per_s"] = row["img_per_s"] * flops[objective] / 1e12
                rows.append(row)
                print(f"{model:>18} {objective:>9} compile={str(compile):5}: {row['img_per_s']:9.1f} img/s  "
                      f"{row['tflop_per_s']:7.1f} TFLOP/s  peak {row['peak_gpu_gib'] or 0:.2f} GiB", flush=True)
                write(rows, args, ceiling=ceiling)
    write(rows, args, ceiling=ceiling)


def write(rows: list[dict], args: argparse.Namespace, *, ceiling: float | None) -> None:
    """The result files (also written after every row, so a run stopped by its time limit keeps what it measured)."""
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else ""
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k in gpu), None)
    for row in rows:
        clean = next((r for r in rows if r["model"] == row["model"] and r["objective"] == "clean"
                      and r["compile"] == row["compile"]), None)
        row["cost_vs_clean"] = clean["img_per_s"] / row["img_per_s"] if clean else None
        row["fraction_of_measured_bf16_peak"] = row["tflop_per_s"] / ceiling if ceiling else None
        row["fraction_of_datasheet_bf16_peak"] = row["tflop_per_s"] / datasheet if datasheet else None
    lines = ["# Training throughput", "", f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Batch {args.batch_size}, {args.steps} batches per pass, median of {args.repeats} passes after a "
             f"warm-up pass, precision {args.precision}, device {args.device}; synthetic 32×32 data in memory. "
             f"GFLOP/image counted with torch.utils.flop_counter over one real training step (attack included).", ""]
    if ceiling:
        lines += [f"Measured bf16 matrix-product ceiling (8192³, random data): **{ceiling:.0f} TFLOP/s**"
                  + (f" (datasheet dense bf16: {datasheet:.0f})" if datasheet else "") + ".", ""]
    lines += ["| model | objective | compile | precision | img/s | × cost of clean | GFLOP/img | TFLOP/s | "
              "% of measured bf16 peak | peak GPU GiB | warm-up s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = f"{100 * r['fraction_of_measured_bf16_peak']:.1f}" if r["fraction_of_measured_bf16_peak"] else "–"
        cost = f"{r['cost_vs_clean']:.1f}" if r["cost_vs_clean"] else "–"
        peak = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "–"
        lines.append(f"| {r['model']} | {r['objective']} | {'yes' if r['compile'] else 'no'} | {r['precision']} | "
                     f"{r['img_per_s']:.1f} | {cost} | {r['gflop_per_image']:.2f} | {r['tflop_per_s']:.1f} | {frac} | "
                     f"{peak} | {r['warmup_seconds']:.1f} |")
    write_result(args.name or f"throughput_{args.device.split(':')[0]}",
                 {"machine": machine(), "command": command_line(),
                  "settings": {**vars(args), "results": str(args.results)}, "bf16_ceiling_tflops": ceiling,
                  "datasheet_bf16_tflops": datasheet, "rows": rows},
                 "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
