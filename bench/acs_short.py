"""A short adversarial-coreset run on the CIFAR-10 JPEG copy, and the paper protocol it implies.

    python bench/acs_short.py --device cuda                       # ResNet-18, all 50k images, 3 epochs each
    python bench/acs_short.py --device cpu --n-train 512 --n-test 128 --model resnet_tiny_cifar   # smoke test

Two runs of ``recipes/cifar10_linf.yaml`` (ℓ∞ PGD-10 AT) through the real CLI: full-data training
and GradMatch 50% (one warm-start epoch, then a selection before every coreset epoch). From their
``metrics.jsonl`` it reports wall time per epoch, training time per epoch, and the selection pass
split into attack / features / solver, then estimates the paper's 120-epoch protocol (warm start
30, re-selection every 20 epochs: 5 selections) as the paper times it (training epochs plus
selection passes, no evaluation), next to the paper's Table 1 (292.87 and 148.03 minutes on its
GPU). Accuracies after 3 epochs say nothing about the method; they only show the runs trained.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from _common import (
    LOCAL,
    ROOT,
    SHARED_CIFAR,
    add_results_arg,
    advtrain,
    cifar_subset,
    command_line,
    machine,
    write_result,
)

from advtrain.reports.run import epoch_split, split_line

PAPER_MINUTES = {"full": 292.87, "gradmatch": 148.03}
PROTOCOL = {"epochs": 120, "warm_start_epochs": 30, "select_every": 20}


def run(name: str, npz: Path, args: argparse.Namespace, selector: list[str]) -> dict:
    out = LOCAL / "acs_short" / name
    args_ = ["run", str(ROOT / "recipes" / "cifar10_linf.yaml"),
             f"name=acs_{name}", f"output.dir={out}", f"device={args.device}", f"data.path={npz}",
             f"data.batch_size={args.batch_size}", f"model={args.model}", f"schedule.epochs={args.epochs}",
             "eval.every=0", f"eval.n_examples={args.n_eval}", "train.log_every=50", *selector, *args.override,
             "--overwrite"]
    done = advtrain(*args_)
    print("$", done.command, flush=True)
    wall = done.seconds
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return {"name": name, "command": done.command, "wall_seconds": wall, "metrics": metrics, "report": report}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(full: dict, acs: dict) -> dict:
    """Per-epoch figures (the first epoch of each run also pays cuDNN autotuning: left out when possible)."""
    def train_times(metrics: list[dict], phase: str) -> list[float]:
        times = [m["train_time"] for m in metrics if m["phase"] == phase and "train_time" in m]
        return times[1:] if phase == "full" and len(times) > 1 else times

    selections = [m["selection"] for m in acs["metrics"] if m.get("selection")]
    t_full = _median(train_times(full["metrics"], "full"))
    t_core = _median(train_times(acs["metrics"], "coreset"))
    sel = {k: _median([s[k] for s in selections]) for k in ("attack_s", "features_s", "solver_s", "total_s")}
    e, w, t = PROTOCOL["epochs"], PROTOCOL["warm_start_epochs"], PROTOCOL["select_every"]
    n_sel = math.ceil((e - w) / t)
    est_full = e * t_full / 60 if t_full else None
    est_acs = (w * t_full + (e - w) * t_core + n_sel * sel["total_s"]) / 60 if t_full and t_core else None
    return {
        "full_epoch_train_s": t_full, "coreset_epoch_train_s": t_core, "selection_s": sel,
        "full_epoch_wall_s": _median([m["epoch_time"] for m in full["metrics"]][1:] or
                                     [m["epoch_time"] for m in full["metrics"]]),
        "coreset_epoch_wall_s": _median([m["epoch_time"] for m in acs["metrics"] if m["phase"] == "coreset"]),
        # where those wall epochs went (metrics lines' timing; None from an advtrain before it)
        "full_epoch_split": epoch_split(full["metrics"][1:] or full["metrics"]),
        "coreset_epoch_split": epoch_split([m for m in acs["metrics"] if m["phase"] == "coreset"]),
        "coreset_size": next((m["coreset_size"] for m in acs["metrics"] if m.get("coreset_size")), None),
        "protocol": {**PROTOCOL, "selections": n_sel},
        "estimate_minutes": {"full": est_full, "gradmatch": est_acs},
        "estimate_speedup": est_full / est_acs if est_full and est_acs else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jpeg", type=Path, default=SHARED_CIFAR, help="cifar10_jpeg_q75.npz")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--n-eval", type=int, default=1000, help="test images for the final PGD-20 evaluation")
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--batch-size", type=int, default=128, help="the recipe's (paper) batch size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value overrides for both runs")
    parser.add_argument("--name", default=None, help="result file name (default acs_short_<device>)")
    add_results_arg(parser)
    args = parser.parse_args()
    start = time.perf_counter()
    npz = cifar_subset(args.n_train, args.n_test, args.jpeg)
    decode_s = time.perf_counter() - start
    full = run("full", npz, args, ["selector=full", "schedule.warm_start_epochs=0"])
    acs = run("gradmatch", npz, args, ["selector=gradmatch", f"selector.fraction={args.fraction}",
                                       "schedule.warm_start_epochs=1", "schedule.select_every=1"])
    summary = summarize(full, acs)
    s, est = summary, summary["estimate_minutes"]

    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "–" if v is None else format(v, spec)

    def split(v: dict | None) -> str:
        return "–" if v is None else split_line(v)

    def acc(r: dict) -> str:
        test = (r["report"] or {}).get("test") or {}
        parts = [f"clean {100 * test['clean_acc']:.1f}%"] if isinstance(test.get("clean_acc"), float) else []
        parts += [f"{k} {100 * v:.1f}%" for k, v in (test.get("robust_acc") or {}).items() if isinstance(v, float)]
        return ", ".join(parts) or "–"

    lines = ["# Adversarial coresets on the CIFAR-10 JPEG copy: a short run and the paper protocol it implies", "",
             f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"`recipes/cifar10_linf.yaml` (ℓ∞ PGD-10, ε 8/255) with {args.model}, batch {args.batch_size}, "
             f"{args.n_train} training images (JPEG copy: accuracies are close to, not equal to, real CIFAR-10), "
             f"{args.epochs} epochs per run; GradMatch {args.fraction:.0%}: 1 warm-start epoch, then a selection "
             f"before each coreset epoch. Decoding took {decode_s:.0f} s.", "",
             "| figure | full | GradMatch |", "|---|---|---|",
             f"| training time per epoch (s) | {fmt(s['full_epoch_train_s'])} | {fmt(s['coreset_epoch_train_s'])} |",
             f"| wall time per epoch (s) | {fmt(s['full_epoch_wall_s'])} | {fmt(s['coreset_epoch_wall_s'])} |",
             f"| where a wall epoch goes (mean s; full: epochs 2+) | {split(s['full_epoch_split'])} | "
             f"{split(s['coreset_epoch_split'])} |",
             f"| selection pass: attack / features / solver (s) | – | {fmt(s['selection_s']['attack_s'])} / "
             f"{fmt(s['selection_s']['features_s'])} / {fmt(s['selection_s']['solver_s'], '.2f')} |",
             f"| coreset size | {args.n_train} | {s['coreset_size']} |",
             f"| whole run wall time (s) | {full['wall_seconds']:.0f} | {acs['wall_seconds']:.0f} |",
             f"| test accuracy after {args.epochs} epochs | {acc(full)} | {acc(acs)} |", "",
             f"**Estimate of the paper protocol** ({PROTOCOL['epochs']} epochs, warm start "
             f"{PROTOCOL['warm_start_epochs']}, selection every {PROTOCOL['select_every']}: "
             f"{s['protocol']['selections']} selections; training epochs + selection passes):", "",
             "| | full AT | ACS GradMatch 50% | speed-up |", "|---|---|---|---|",
             f"| this machine (estimate, min) | {fmt(est['full'])} | {fmt(est['gradmatch'])} | "
             f"{fmt(s['estimate_speedup'], '.2f')}× |",
             f"| paper Table 1 (min) | {PAPER_MINUTES['full']} | {PAPER_MINUTES['gradmatch']} | "
             f"{PAPER_MINUTES['full'] / PAPER_MINUTES['gradmatch']:.2f}× |", ""]
    for r in (full, acs):
        lines.append(f"- `{r['command']}`")
    write_result(args.name or f"acs_short_{args.device.split(':')[0]}",
                 {"machine": machine(), "command": command_line(), "settings": {**vars(args), "jpeg": str(args.jpeg),
                  "results": str(args.results)}, "decode_seconds": decode_s, "summary": summary,
                  "runs": [full, acs]}, "\n".join(lines) + "\n", args.results)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
