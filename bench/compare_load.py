"""`advtrain compare` on runs timed under different machine loads (issue: speed-ups across processes).

Three tiny runs through the real CLI: a full-data run and a GradMatch run on a quiet machine, and
the same GradMatch run again while ``--burners`` busy-loop processes compete for the CPU. Then
``advtrain compare`` of all three. The within-run speed-up (each run's own full epochs against
its coreset epochs) should agree between the quiet and the loaded GradMatch run; the speed-up
against the full run divides times of different processes and should not, and compare should
warn about it.

    python bench/compare_load.py [--burners 4] [--runs local/compare_load]

Writes ``bench/results/compare_load.{md,json}`` (the table of ``advtrain compare`` and the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, add_results_arg, command_line, machine, write_result

TINY = ROOT / "tests" / "assets" / "tiny.yaml"
#: 1280 training images of 8×8 (960 after the validation split), 30 batches of 32 per full epoch;
#: five full-data epochs give the within-run estimate a median over several epochs.
BASE = ["data.n_train=1280", "data.batch_size=32", "schedule.epochs=10", "eval.every=0", "eval.n_examples=32"]
CORESET = ["selector=gradmatch", "selector.fraction=0.5", "schedule.warm_start_epochs=5", "schedule.select_every=5"]
#: One intra-op thread per run: torch's thread pool spins against the burners otherwise.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
BURN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def advtrain(*args: str, log: Path) -> None:
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "advtrain", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                       check=True, env=ENV)


def train(runs: Path, name: str, extra: list[str], burners: int = 0) -> float:
    """One run (with ``burners`` busy processes alive for its whole duration); its wall seconds."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
    try:
        start = time.perf_counter()
        advtrain("run", str(TINY), *BASE, *extra, f"output.dir={runs / name}", log=runs / f"{name}.log")
        return time.perf_counter() - start
    finally:
        for proc in procs:  # only the processes started here, by their own handles
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=4, help="busy-loop processes during the loaded run")
    parser.add_argument("--runs", type=Path, default=ROOT / "local" / "compare_load")
    add_results_arg(parser)
    args = parser.parse_args()
    runs = args.runs.resolve()
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    seconds = {"full": train(runs, "full", []), "gradmatch_quiet": train(runs, "gradmatch_quiet", CORESET),
               # another seed: compare refuses one configuration and seed twice
               "gradmatch_loaded": train(runs, "gradmatch_loaded", [*CORESET, "seed=1"], burners=args.burners)}
    out = runs / "compare"
    proc = subprocess.run([sys.executable, "-m", "advtrain", "compare", *(str(runs / n) for n in seconds),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads((out / "compare.json").read_text())
    by_run = {Path(r["path"]).name: r for r in result["runs"]}
    quiet, loaded = by_run["gradmatch_quiet"], by_run["gradmatch_loaded"]
    figures = {
        "within_quiet": quiet["speedup_within"], "within_loaded": loaded["speedup_within"],
        "within_change": loaded["speedup_within"] / quiet["speedup_within"] - 1,
        "vs_full_quiet": quiet["speedup"], "vs_full_loaded": loaded["speedup"],
        "vs_full_change": loaded["speedup"] / quiet["speedup"] - 1,
        "full_epoch_s": {n: by_run[n]["full_epoch_s"] for n in by_run}, "wall_s": seconds,
        "warnings": [w.replace(str(runs) + "/", "") for w in result["warnings"]]}
    table = proc.stdout.replace(str(runs) + "/", "")
    md = ["# advtrain compare under different machine loads", "",
          f"Command: `{command_line()}` (machine: {machine().get('platform')}, torch {machine().get('torch')}, "
          f"git {machine().get('git')}, OMP_NUM_THREADS={ENV['OMP_NUM_THREADS']}). Tiny synthetic 8×8 data, small "
          f"CNN, PGD-2; "
          f"{args.burners} busy-loop processes during `gradmatch_loaded` only.", "",
          "| run | speed-up (own full epochs) | speed-up (vs the quiet full run) | full epochs (s) |",
          "|---|---|---|---|"]
    for name in ("gradmatch_quiet", "gradmatch_loaded"):
        r = by_run[name]
        md.append(f"| {name} | {r['speedup_within']:.2f}× | {r['speedup']:.2f}× | "
                  f"{', '.join(f'{t:.2f}' for t in r['full_epoch_s'])} |")
    md += ["", f"Within-run speed-up changed by {figures['within_change']:+.1%} under load; the speed-up against "
           f"the quiet full run by {figures['vs_full_change']:+.1%}.", "",
           "`advtrain compare` output (run folders relative):", "", "```", table.rstrip(),
           proc.stderr.replace(str(runs) + "/", "").rstrip(), "```", ""]
    write_result("compare_load", {"command": command_line(), "machine": machine(), **figures}, "\n".join(md),
                 args.results)
    print("\n".join(md))


if __name__ == "__main__":
    main()
