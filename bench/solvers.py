"""Coreset solver time: CRAIG and GradMatch at CIFAR-10 scale, sample-level per class and batch-wise.

    python bench/solvers.py                 # CPU: N = 5k and 50k with the cells a CPU can do in minutes
    python bench/solvers.py --device cuda --big

Features are random with the shapes of ResNet-18's last layer on CIFAR-10 (D = 10 + 10·512 = 5130;
bias only: D = 10); the solver's work depends on the shapes and budget, not on the values. Budget
50% of N. Runs through the registered selectors, exactly as a training run calls them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import command_line, machine, write_result

from advtrain.selection import SELECTORS
from advtrain.selection.selectors import CraigParams, GradMatchParams

CELLS = [  # (N, D, granularity, per_class, needs --big)
    (5_000, 5_130, "batch", False, False),
    (5_000, 5_130, "sample", True, False),
    (5_000, 10, "sample", True, False),
    (50_000, 5_130, "batch", False, False),
    (50_000, 10, "sample", True, False),
    (50_000, 5_130, "sample", True, True),
]


def run(name: str, n: int, d: int, granularity: str, per_class: bool, device: str, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=gen).to(device)
    labels = torch.arange(n) % 10
    cls = CraigParams if name == "craig" else GradMatchParams
    params = cls(fraction=0.5, granularity=granularity, per_class=per_class)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        SELECTORS.get(name).builder(params, feats, labels, generator=torch.Generator().manual_seed(r), batch_size=128)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--big", action="store_true", help="include per-class sample-level at N=50k, D=5130")
    args = parser.parse_args()
    rows = []
    for n, d, granularity, per_class, big in CELLS:
        for name in ("craig", "gradmatch"):
            cell = {"solver": name, "n": n, "d": d, "granularity": granularity, "per_class": per_class}
            if big and not args.big:
                cell["seconds"] = None
                cell["note"] = "skipped (pass --big; k = 2500 atoms per class)"
            else:
                cell["seconds"] = run(name, n, d, granularity, per_class, args.device, args.repeats)
            rows.append(cell)
            print(cell, flush=True)
    lines = ["# Coreset solver time (budget 50%)", "", f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             "Batch-wise uses mini-batches of 128 (N/128 candidates). Per class: 10 balanced classes.", "",
             "| solver | N | D | granularity | per class | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['seconds']:.2f}" if r["seconds"] is not None else r["note"]
        lines.append(f"| {r['solver']} | {r['n']} | {r['d']} | {r['granularity']} | {r['per_class']} | {value} |")
    write_result(f"solvers_{args.device.split(':')[0]}", {"machine": machine(), "command": command_line(),
                                                          "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
