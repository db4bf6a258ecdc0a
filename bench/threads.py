"""A short default run alone and under CPU load, before and after the thread policy of issue 25.

``before``: what advtrain did until then — torch's default thread count and OpenMP's default wait
(idle threads spin), i.e. the CLI app called without ``main()``'s ``OMP_WAIT_POLICY=PASSIVE``.
``after``: ``advtrain`` as shipped — the count from the CPUs this process may use and idle
threads that sleep. ``after, 1 thread``: the same with ``--threads 1``. Each configuration runs
the README's first recipe, shortened (``--epochs``, default 3: one warm-start epoch, then a
GradMatch selection each epoch), with N busy-loop processes beside it (``--loads``, default 0
and 2), and the wall time of the whole command is kept (median of ``--repeats``).

    python bench/threads.py                      # about 8 minutes on 2 cores
    python bench/threads.py --loads 0,2 --repeats 1 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, add_results_arg, command_line, machine, write_result  # noqa: E402

RECIPE = "recipes/digits_linf.yaml"
#: (label, python code run as the CLI, extra arguments, environment changes)
CONFIGS = [
    ("before (spinning, torch default)", "from advtrain.cli import app; app()", [], {}),
    ("after (auto, passive wait)", "from advtrain.cli import main; main()", [], {}),
    ("after, --threads 1", "from advtrain.cli import main; main()", ["--threads", "1"], {}),
]


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.kill()
        proc.wait()


def one_run(code: str, extra: list[str], env_changes: dict, epochs: int, out: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_changes)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-c", code, "run", RECIPE, f"schedule.epochs={epochs}", "schedule.warm_start_epochs=1",
            "schedule.select_every=1", "eval.every=0", f"output.dir={out}", "--overwrite", *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    found = re.search(r"\d+ threads? \([^)]*\)", " ".join(proc.stdout.split()))
    return seconds, found.group(0) if found else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default="0,2", help="comma list of busy-loop process counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the existing .json only")
    add_results_arg(parser)
    args = parser.parse_args()
    if args.render:
        path = Path(args.results) / "threads_cpu.json"
        (Path(args.results) / "threads_cpu.md").write_text(render(json.loads(path.read_text())))
        return
    loads = [int(x) for x in args.loads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for load in loads:
            for label, code, extra, env in CONFIGS:
                times, header, loadavg = [], "", []
                for r in range(args.repeats):
                    loops = busy_loops(load)
                    try:
                        time.sleep(1.0 if load else 0.0)
                        loadavg.append(os.getloadavg()[0])
                        seconds, header = one_run(code, extra, env, args.epochs, Path(tmp) / f"r{load}_{r}")
                    finally:
                        stop(loops)
                    times.append(seconds)
                    print(f"load {load}  {label:34s} {seconds:7.1f}s  [{header}]", flush=True)
                rows.append({"busy_loops": load, "config": label, "seconds": times,
                             "median_s": statistics.median(times), "header": header,
                             "loadavg_1min_at_start": loadavg})
    record = {"command": command_line(), "recipe": RECIPE, "epochs": args.epochs, "repeats": args.repeats,
              "machine": machine(), "rows": rows}
    write_result("threads_cpu", record, render(record), args.results)


def render(record: dict) -> str:
    """The Markdown table of a result record (``--render`` redoes it from the JSON without measuring)."""
    rows = record["rows"]
    base = {r["busy_loops"]: r["median_s"] for r in rows if r["config"].startswith("before")}
    lines = ["# Threads on a shared CPU: the default run alone and under load (issue 25)", "",
             f"Command: `{record['command']}`", "",
             f"`advtrain run {record['recipe']} schedule.epochs={record['epochs']} schedule.warm_start_epochs=1 "
             "schedule.select_every=1 eval.every=0` (one warm-start epoch, a GradMatch selection each "
             "epoch after it, the final test evaluation): wall time of the whole command, median of "
             f"{record.get('repeats', 1)}. *busy loops*: processes running `while True: pass` beside it. The "
             "machine (2 cores) was also shared with other jobs, so *0 busy loops* is not an idle machine: "
             "the 1-minute load average at each start is listed.", "",
             "*before* runs the CLI app without `main()`, so OpenMP keeps its default wait policy (idle "
             "threads spin); on this machine the automatic count equals torch's default (2), so the thread "
             "count is the same and the difference is the wait policy. *after* is `advtrain` as shipped.", "",
             "| busy loops | configuration | threads (run header) | wall s | speed-up vs before | load avg at start |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = base[r["busy_loops"]] / r["median_s"]
        avg = ", ".join(f"{a:.1f}" for a in r["loadavg_1min_at_start"])
        lines.append(f"| {r['busy_loops']} | {r['config']} | {r['header']} | {r['median_s']:.1f} | "
                     f"{ratio:.2f}× | {avg} |")
    lines += ["", f"Machine: {json.dumps(record['machine'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
