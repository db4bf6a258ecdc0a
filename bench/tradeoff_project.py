"""Project finished runs' measured costs onto a longer schedule: selection share and loop speed-up.

A short benchmark grid re-selects far more often per epoch than a real schedule (CIFAR grid: every
4 of 15 epochs; the paper: T = 20 of 120), so its selection share overstates what a full run pays.
This script takes each run's measured full-epoch, coreset-epoch and selection-pass seconds
(``report.json`` ``speedup`` and ``metrics.jsonl``) and evaluates the loop of another schedule:

    loop = W·t_full + (E − W)·t_coreset + P·t_pass,   P = number of selections in [W, E) every T
    share = P·t_pass / loop,   speed-up = E·t_full / loop,   ideal = E / (W + (E − W)·f)

    python bench/tradeoff_project.py local/tradeoff/cifar10 --epochs 120 --warm 30 --every 20 --name cifar10
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml
from _common import add_results_arg, command_line, machine, write_result


def run_costs(run: Path) -> dict | None:
    """Measured seconds of one finished coreset run, or None (full runs, unfinished runs)."""
    report = run / "report.json"
    metrics = run / "metrics.jsonl"
    if not report.is_file() or not metrics.is_file():
        return None
    speedup = json.loads(report.read_text()).get("speedup") or {}
    if "full_epoch_s" not in speedup or "coreset_epoch_s" not in speedup:
        return None
    passes = [json.loads(line).get("selection") for line in metrics.read_text().splitlines() if line.strip()]
    passes = [p["total_s"] for p in passes if p]
    selector = (yaml.safe_load((run / "recipe.yaml").read_text()) or {}).get("selector") or {}
    fraction = selector.get("fraction")
    return {"full": speedup["full_epoch_s"], "coreset": speedup["coreset_epoch_s"],
            "pass": statistics.median(passes) if passes else 0.0,
            "fraction": float(fraction) if fraction is not None else None}


def project(costs: dict, epochs: int, warm: int, every: int) -> dict:
    selections = len(range(warm, epochs, every))
    loop = warm * costs["full"] + (epochs - warm) * costs["coreset"] + selections * costs["pass"]
    ideal = epochs / (warm + (epochs - warm) * costs["fraction"])
    speedup = epochs * costs["full"] / loop
    return {"share": selections * costs["pass"] / loop, "speedup": speedup, "ideal": ideal,
            "ratio": speedup / ideal, "selections": selections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="folder of finished runs (e.g. local/tradeoff/cifar10)")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--warm", type=int, default=30)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--name", required=True, help="result files: tradeoff_<name>_projection.{md,json}")
    add_results_arg(parser)
    args = parser.parse_args()
    groups: dict[str, list[dict]] = {}
    for run in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        costs = run_costs(run)
        if costs is None or costs["fraction"] is None:
            continue
        groups.setdefault(run.name.rsplit("_s", 1)[0], []).append({**costs, **project(costs, args.epochs, args.warm,
                                                                                       args.every)})
    lines = [f"# Projected to E = {args.epochs}, W = {args.warm}, T = {args.every} ({args.name})", "",
             f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             "From each run's measured full-epoch, coreset-epoch and median selection-pass seconds; mean over "
             "seeds. loop = W·t_full + (E − W)·t_coreset + P·t_pass; speed-up = E·t_full / loop.", "",
             "| configuration | runs | t_full s | t_coreset s | t_pass s | selections | selection share | "
             "speed-up | ideal | speed-up / ideal |", "|---|---|---|---|---|---|---|---|---|---|"]
    record = {"machine": machine(), "command": command_line(), "schedule": vars(args) | {"runs": str(args.runs),
                                                                                        "results": str(args.results)},
              "rows": {}}
    for name, rows in groups.items():
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("full", "coreset", "pass", "share", "speedup",
                                                                    "ideal", "ratio")}
        record["rows"][name] = {"n": len(rows), **mean}
        lines.append(f"| {name} | {len(rows)} | {mean['full']:.2f} | {mean['coreset']:.2f} | {mean['pass']:.1f} | "
                     f"{rows[0]['selections']} | {100 * mean['share']:.1f}% | {mean['speedup']:.2f}× | "
                     f"{mean['ideal']:.2f}× | {mean['ratio']:.3f} |")
    write_result(f"tradeoff_{args.name}_projection", record, "\n".join(lines) + "\n", args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
