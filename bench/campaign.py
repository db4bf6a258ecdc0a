"""Campaign runner: a grid of ``advtrain run`` + ``advtrain eval`` through the real CLI, one slice per call.

A *grid* (``bench/grids/<name>.yaml``) is a base recipe, overrides per configuration, seeds and
evaluations. ``run`` works through the grid's (configuration, seed) pairs in seed-major order and
starts a run only if its estimated cost fits the wall budget left (``--budget-s``; estimates come
from the grid's own finished runs on the same device, else from the grid's conservative prior).
Each finished run writes one small JSON, ``<results>/<grid>/<config>_seed<k>.json``: overrides,
seed, git commit and dirty flag, device, per-epoch times, selection timings, accuracies per attack
and the per-example robust bits. Finished runs are never re-run; an interrupted run folder is
continued with ``advtrain run --resume`` (``--restart``: started over). Run folders live under
``--runs`` (default ``local/campaign/``, git-ignored) and are never committed.

    python bench/campaign.py plan cifar10_linf                   # the next slice, with cost estimates
    python bench/campaign.py run cifar10_linf --device cuda      # one slice (default budget 360 s)
    python bench/campaign.py aggregate cifar10_linf              # bench/results/campaign_cifar10_linf.{md,png}
    python bench/campaign.py unpack OUT/campaign_cifar10_linf.tar  # a device call's JSONs into bench/results/campaign/
    python bench/campaign.py run smoke --device cpu --results local/campaign/results   # the CPU pipeline check

Nothing the runner writes under ``--results`` holds a machine path: paths inside the checkout are
written relative to it, and the data file is named by what it is, not where it lies.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from campaign_grid import NAME, ROOT, Grid, GridError, RunSpec, load_grid, selections

SCHEMA = 1
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "local" / "campaign"
#: The default slice: an 8-minute device call less ≤ 90 s of CUDA smoke, installs, decoding and packing.
DEFAULT_BUDGET_S = 360.0
#: A child still running this long past the budget is stopped (SIGTERM, then SIGKILL): the call must end.
HARD_STOP_GRACE_S = 60.0
RECORD_NAME = re.compile(rf"(?P<grid>{NAME.pattern})/(?P<config>{NAME.pattern})_seed(?P<seed>\d{{1,9}})\.json")
MAX_RECORD_BYTES = 1 << 20


class CampaignError(RuntimeError):
    """Something the user must fix (bad grid, missing data, a failing child): one paragraph, exit 2."""


# ----------------------------------------------------------------------------------- paths and text
def shown(path: Path | str) -> str:
    """A path as it may appear in committed files: relative to the checkout, else its name only."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


_ABSOLUTE = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*")


def scrub(text: str) -> str:
    """Text with the checkout's own prefix dropped and any other absolute path reduced to its name."""
    text = text.replace(str(ROOT) + os.sep, "")
    return _ABSOLUTE.sub(lambda m: Path(m.group(0)).name or "<path>", text)


def arg_path(path: Path) -> str:
    """A path for a child's command line: relative inside the checkout (the child runs there), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def record_path(results: Path, grid: Grid, spec: RunSpec) -> Path:
    return results / grid.name / f"{spec.tag}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_records(results: Path, grid_name: str) -> list[dict[str, Any]]:
    """Every finished run's JSON of a grid (a file that is not a record is an error naming it)."""
    out = []
    for path in sorted((results / grid_name).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CampaignError(f"{shown(path)} is not a campaign record ({err}); delete it or restore it "
                                f"from git, then run again.") from None
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA or rec.get("grid") != grid_name:
            raise CampaignError(f"{shown(path)} is not a campaign record of grid '{grid_name}' "
                                f"(schema {SCHEMA}); move it out of {shown(results / grid_name)}.")
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------- cost model
@dataclass
class Costs:
    """Seconds per piece of a run, measured on this device where the grid has runs, else the prior."""

    start_s: float
    full_epoch_s: float
    coreset_epoch_s: dict[float, float]
    selection_s: dict[str, float]
    eval_s: dict[str, float]
    safety: float
    measured: int

    def coreset_epoch(self, fraction: float) -> float:
        for f, seconds in self.coreset_epoch_s.items():
            if math.isclose(f, fraction):
                return seconds
        return self.full_epoch_s * fraction

    def selection(self, selector: str) -> float:
        return self.selection_s.get(selector, max(self.selection_s.values(), default=10.0))


def _steady_seconds(schedule: dict[str, Any], costs: Costs, epochs_done: int = 0) -> float:
    """Epoch and selection seconds of a schedule from ``epochs_done`` on (selection inside coreset epochs)."""
    warm = schedule["warm_start"] if schedule["selector"] != "full" else schedule["epochs"]
    total = 0.0
    for epoch in range(epochs_done, schedule["epochs"]):
        total += costs.full_epoch_s if epoch < warm else costs.coreset_epoch(schedule["fraction"])
    remaining = dict(schedule, warm_start=max(schedule["warm_start"], epochs_done))
    return total + selections(remaining) * costs.selection(schedule["selector"])


def learn_costs(grid: Grid, records: list[dict[str, Any]], device: str) -> Costs:
    """The grid's prior, replaced piece by piece by medians of this device's finished runs."""
    prior = grid.prior
    mine = [r for r in records if r.get("device") == device]
    full = [e["epoch_time"] for r in mine for e in r["epochs"][1:] if e.get("phase") == "full"]
    coreset: dict[float, list[float]] = {}
    sel: dict[str, list[float]] = {}
    for r in mine:
        fraction = float(r["schedule"]["fraction"])
        for e in r["epochs"]:
            if e.get("phase") != "coreset":
                continue
            pass_s = float((e.get("selection") or {}).get("total_s", 0.0))
            coreset.setdefault(fraction, []).append(e["epoch_time"] - pass_s)
            if e.get("selection"):
                sel.setdefault(r["schedule"]["selector"], []).append(pass_s)
    costs = Costs(start_s=prior.start_s, full_epoch_s=statistics.median(full) if full else prior.full_epoch_s,
                  coreset_epoch_s={f: statistics.median(v) for f, v in coreset.items()},
                  selection_s={**prior.selection_s, **{k: statistics.median(v) for k, v in sel.items()}},
                  eval_s=dict(prior.eval_s), safety=prior.safety, measured=len(mine))
    if mine:
        # The per-run overhead (start, data, compile warm-up, report) is what the steady part leaves.
        costs.start_s = max(r["timing"]["run_wall_s"] - _steady_seconds(r["schedule"], costs) for r in mine)
        costs.start_s = max(costs.start_s, 1.0)
        for name in {n for r in mine for n in r["timing"].get("eval_wall_s", {})}:
            costs.eval_s[name] = max(r["timing"]["eval_wall_s"][name] for r in mine
                                     if name in r["timing"].get("eval_wall_s", {}))
    return costs


def estimate(grid: Grid, spec: RunSpec, costs: Costs, epochs_done: int = 0,
             evals_done: frozenset[str] = frozenset(), trained: bool = False) -> float:
    """Seconds the rest of this run should take, the grid's safety factor included."""
    seconds = 0.0
    if not trained:
        seconds += costs.start_s + _steady_seconds(grid.schedule(spec.config), costs, epochs_done)
    seconds += sum(costs.eval_s.get(e.name, 60.0) for e in grid.evals if e.name not in evals_done)
    return seconds * costs.safety


def plan(grid: Grid, specs: list[RunSpec], estimates: dict[str, float], budget_s: float) -> list[RunSpec]:
    """First fit in order: each run whose estimate fits what the earlier picks leave of the budget."""
    picked, left = [], budget_s
    for spec in specs:
        if estimates[spec.tag] <= left:
            picked.append(spec)
            left -= estimates[spec.tag]
    return picked


# ----------------------------------------------------------------------------------- one run's state
@dataclass
class RunState:
    """Where an unfinished run stands in its folder."""

    folder: Path
    epochs_done: int
    trained: bool
    evals_done: frozenset[str]
    walls: dict[str, Any]

    @classmethod
    def read(cls, runs: Path, grid: Grid, spec: RunSpec) -> RunState:
        folder = runs / grid.name / spec.tag
        metrics = folder / "metrics.jsonl"
        epochs = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0
        done = frozenset(e.name for e in grid.evals if (folder / "eval" / e.name / "report.json").is_file())
        walls_file = folder.parent / f"{spec.tag}.walls.json"
        walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {"run": [], "eval": {}}
        return cls(folder, epochs, (folder / "report.json").is_file(), done, walls)

    def save_walls(self, spec: RunSpec) -> None:
        write_json_atomic(self.folder.parent / f"{spec.tag}.walls.json", self.walls)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class SliceOver(RuntimeError):
    """The hard stop came while a child was running; it was stopped, the slice ends."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def execute(argv: list[str], log: Path, hard_stop: float) -> float:
    """``python -m advtrain ARGV`` in the checkout, output to ``log``; its wall seconds.

    A child still running at ``hard_stop`` (a monotonic time) gets SIGTERM (advtrain saves a
    resumable checkpoint and exits), then SIGKILL 30 s later, and :class:`SliceOver` is raised.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "a") as handle:
        handle.write(f"\n$ advtrain {' '.join(argv)}\n")
        handle.flush()
        proc = subprocess.Popen([sys.executable, "-m", "advtrain", *argv], cwd=ROOT, env=child_env(),
                                stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=max(1.0, hard_stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise SliceOver(f"`advtrain {argv[0]}` passed the slice's hard stop and was stopped",
                            time.monotonic() - start) from None
    if code != 0:
        raise CampaignError(f"`advtrain {argv[0]}` exited with code {code}; its output is in {shown(log)} "
                            f"(finished runs are kept; fix the cause and run the same command again).")
    return time.monotonic() - start


def data_path(grid: Grid, jpeg: Path | None) -> str | None:
    """The dataset file the grid's ``{data}`` placeholder stands for (decoded once, cached under local/)."""
    if grid.data.get("source", "recipe") != "cifar10_jpeg":
        return None
    from _common import cifar_subset

    try:
        path = cifar_subset(int(grid.data["n_train"]), int(grid.data["n_test"]), jpeg)
    except SystemExit as err:
        raise CampaignError(f"grid {grid.name} needs the CIFAR-10 JPEG copy: {err}. Give it with --jpeg "
                            f"(on the GPU machine: local/gpu/cifar10_jpeg_q75.npz).") from None
    return arg_path(path)


def data_description(grid: Grid) -> str:
    if grid.data.get("source") == "cifar10_jpeg":
        return (f"CIFAR-10 JPEG copy (quality 75): first {grid.data['n_train']} training and "
                f"{grid.data['n_test']} test images")
    return f"the recipe's own dataset ({grid.recipe})"


def run_overrides(grid: Grid, spec: RunSpec, folder: Path, device: str, data: str | None) -> list[str]:
    items = [o.replace("{data}", data) if data is not None else o for o in spec.overrides]
    return [*items, f"seed={spec.seed}", f"name={spec.tag}", f"output.dir={arg_path(folder)}",
            f"device={device}"]


def train(grid: Grid, spec: RunSpec, state: RunState, device: str, data: str | None, restart: bool,
          hard_stop: float) -> None:
    """``advtrain run`` (``--resume`` where a checkpoint of an unfinished run exists)."""
    log = state.folder.parent / f"{spec.tag}.log"
    argv = ["run", grid.recipe, *run_overrides(grid, spec, state.folder, device, data)]
    resumable = (state.folder / "last.safetensors").is_file() and not restart
    try:
        state.walls["run"].append(execute([*argv, "--resume" if resumable else "--overwrite"], log, hard_stop))
    except SliceOver as err:  # the time it ran counts when --resume continues it
        state.walls["run"].append(err.seconds)
        state.save_walls(spec)
        raise
    except CampaignError:
        if not resumable:
            raise
        print(f"  {spec.tag}: --resume failed (see {shown(log)}); starting it over", flush=True)
        state.walls["run"] = []
        state.walls["run"].append(execute([*argv, "--overwrite"], log, hard_stop))
    state.save_walls(spec)


def evaluate(grid: Grid, spec: RunSpec, state: RunState, device: str, hard_stop: float) -> None:
    log = state.folder.parent / f"{spec.tag}.log"
    checkpoint = arg_path(state.folder / "last.safetensors")
    for ev in grid.evals:
        if ev.name in state.evals_done:
            continue
        out = arg_path(state.folder / "eval" / ev.name)
        state.walls["eval"][ev.name] = execute(ev.argv(checkpoint, out, device), log, hard_stop)
        state.save_walls(spec)


# ----------------------------------------------------------------------------------- the record
def git_state() -> dict[str, Any]:
    """Commit and whether tracked or untracked files (results folder aside) differ from it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def resolved_schedule(recipe_yaml: Path) -> dict[str, Any]:
    """Selector, fraction and schedule as the run resolved them (its recipe.yaml)."""
    import yaml

    recipe = yaml.safe_load(recipe_yaml.read_text())
    selector, sched = recipe["selector"], recipe.get("schedule") or {}
    name = str(selector["name"])
    return {"selector": name, "fraction": 1.0 if name == "full" else float(selector.get("fraction", 1.0)),
            "epochs": int(sched["epochs"]), "warm_start": int(sched.get("warm_start_epochs", 0)),
            "select_every": int(sched.get("select_every", 20)), "skip_epochs": int(sched.get("skip_epochs", 0))}


_EPOCH_KEYS = ("epoch", "phase", "train_time", "epoch_time", "samples", "coreset_size", "train_loss", "lr",
               "timing")  # timing: where epoch_time went (advtrain.io.run_records.EPOCH_PARTS; None before it)


def build_record(grid: Grid, spec: RunSpec, state: RunState, device: str, command: str) -> dict[str, Any]:
    """The JSON of one finished run, from its run folder and evaluation reports."""
    import torch

    from advtrain.reports.evaluation import BITS_ENCODING

    metrics = [json.loads(line) for line in (state.folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report = json.loads((state.folder / "report.json").read_text())
    epochs = []
    for m in metrics:
        entry = {k: m.get(k) for k in _EPOCH_KEYS}
        sel = m.get("selection")
        entry["selection"] = None if not sel else {k: sel.get(k) for k in ("attack_s", "features_s", "solver_s",
                                                                            "total_s", "size")}
        epochs.append(entry)
    accuracy: dict[str, float] = {}
    n_examples: dict[str, int] = {}
    bits: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    eval_seconds: dict[str, float] = {}
    for ev in grid.evals:
        rep = json.loads((state.folder / "eval" / ev.name / "report.json").read_text())
        n = int(rep["n_examples"])
        for row in rep["attacks"]:
            accuracy[row["name"]] = float(row["robust_acc"])
            n_examples[row["name"]] = n
            bits[row["name"]] = {"n": n, "indices": row["indices"], "bits": row["robust_bits"]}
            eval_seconds[row["name"]] = float(row["seconds"])
            if row.get("stage_acc"):
                stages[row["name"]] = row["stage_acc"]
        if "clean" not in accuracy:  # clean accuracy is its own field of every report, not an attack row
            accuracy["clean"], n_examples["clean"] = float(rep["clean_acc"]), n
    schedule = resolved_schedule(state.folder / "recipe.yaml")
    return {
        "schema": SCHEMA, "grid": grid.name, "config": spec.config, "seed": spec.seed,
        "recipe": grid.recipe, "overrides": list(spec.overrides), "data": data_description(grid),
        "git": git_state(), "device": device_name(device), "torch": torch.__version__,
        "advtrain_version": report.get("advtrain_version"), "schedule": schedule,
        "epochs": epochs,
        "timing": {"run_wall_s": sum(state.walls["run"]), "run_attempts": len(state.walls["run"]),
                   "report_wall_s": report.get("wall_seconds"), "eval_wall_s": dict(state.walls["eval"]),
                   "attack_s": eval_seconds},
        "accuracy": accuracy, "n_examples": n_examples, "autoattack_stages": stages,
        "evals": [{"name": e.name, "attacks": list(e.attacks), "n_examples": e.n_examples, "eps": e.eps,
                   "alpha": e.alpha} for e in grid.evals],
        "checkpoint": "last", "robust_bits": bits, "robust_bits_encoding": BITS_ENCODING,
        "command": scrub(command), "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_tar(path: Path, results: Path, grid: Grid) -> None:
    """All of the grid's records in one tar (the device call brings back at most 8 files)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rec in sorted((results / grid.name).glob("*.json")):
            tar.add(rec, arcname=f"{grid.name}/{rec.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- commands
def _select(grid: Grid, args: argparse.Namespace) -> list[RunSpec]:
    seeds = None if not args.seeds else [int(s) for s in args.seeds.split(",")]
    configs = None if not args.configs else args.configs.split(",")
    unknown = sorted(set(configs or []) - set(grid.configs))
    if unknown:
        raise CampaignError(f"--configs: {', '.join(unknown)} not in grid {grid.name} "
                            f"(configurations: {', '.join(grid.configs)})")
    return grid.runs(seeds, configs)


def _pending(grid: Grid, args: argparse.Namespace, specs: list[RunSpec]) -> list[RunSpec]:
    return [s for s in specs if not record_path(args.results, grid, s).is_file()]


def _estimates(grid: Grid, args: argparse.Namespace, specs: list[RunSpec], costs: Costs) -> dict[str, float]:
    out = {}
    for spec in specs:
        st = RunState.read(args.runs, grid, spec)
        fresh = args.restart and not st.trained
        out[spec.tag] = estimate(grid, spec, costs, 0 if fresh else st.epochs_done, st.evals_done, st.trained)
    return out


def cmd_plan(grid: Grid, args: argparse.Namespace) -> int:
    specs = _select(grid, args)
    pending = _pending(grid, args, specs)
    costs = learn_costs(grid, read_records(args.results, grid.name), args.device_name)
    estimates = _estimates(grid, args, pending, costs)
    picked = {s.tag for s in plan(grid, pending, estimates, args.budget_s)}
    source = f"measured on {costs.measured} run(s) of this device" if costs.measured else "the grid's prior"
    print(f"grid {grid.name}: {len(specs) - len(pending)} of {len(specs)} runs finished; estimates from {source} "
          f"(× {costs.safety} safety); budget {args.budget_s:.0f} s")
    for spec in pending:
        mark = "next slice" if spec.tag in picked else "later"
        print(f"  {spec.tag:28s} ~{estimates[spec.tag]:6.0f} s  {mark}")
    return 0


def cmd_run(grid: Grid, args: argparse.Namespace) -> int:
    start = time.monotonic()
    hard_stop = start + args.budget_s + HARD_STOP_GRACE_S
    specs = _select(grid, args)
    pending = _pending(grid, args, specs)
    print(f"grid {grid.name}: {len(specs) - len(pending)} of {len(specs)} runs finished, {len(pending)} to go; "
          f"budget {args.budget_s:.0f} s", flush=True)
    if not pending:
        print("nothing to run", flush=True)
        return 0
    data = data_path(grid, args.jpeg)
    device = args.device_name
    command = " ".join(["python", "bench/campaign.py", *sys.argv[1:]])
    ran, skipped = [], []
    for spec in pending:
        costs = learn_costs(grid, read_records(args.results, grid.name), device)
        state = RunState.read(args.runs, grid, spec)
        if args.restart and not state.trained:
            state = RunState(state.folder, 0, False, frozenset(), {"run": [], "eval": {}})
        need = estimate(grid, spec, costs, state.epochs_done, state.evals_done, state.trained)
        left = args.budget_s - (time.monotonic() - start)
        if need > left:
            skipped.append(f"{spec.tag} (~{need:.0f} s, {left:.0f} s left)")
            continue
        print(f"- {spec.tag}: ~{need:.0f} s estimated, {left:.0f} s left", flush=True)
        t0 = time.monotonic()
        try:
            if not state.trained:
                train(grid, spec, state, args.device, data, args.restart, hard_stop)
            evaluate(grid, spec, state, args.device, hard_stop)
        except SliceOver as err:
            print(f"  {spec.tag}: {err}; its folder is kept for --resume on this machine", flush=True)
            break
        record = build_record(grid, spec, state, args.device, command)
        write_json_atomic(record_path(args.results, grid, spec), record)
        if args.tar:
            write_tar(args.tar, args.results, grid)
        ran.append(spec.tag)
        acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in record["accuracy"].items())
        print(f"  {spec.tag}: done in {time.monotonic() - t0:.0f} s (estimated {need:.0f}): {acc}", flush=True)
    if args.tar and not args.tar.exists():
        write_tar(args.tar, args.results, grid)
    print(f"slice: {len(ran)} run(s) finished in {time.monotonic() - start:.0f} s"
          + (f"; not started (would not fit): {', '.join(skipped)}" if skipped else ""), flush=True)
    return 0


def cmd_aggregate(grid: Grid, args: argparse.Namespace) -> int:
    from campaign_report import write_aggregate

    records = read_records(args.results, grid.name)
    if not records:
        raise CampaignError(f"no finished runs of grid {grid.name} under {shown(args.results / grid.name)}; run "
                            f"`python bench/campaign.py run {grid.name}` first (or unpack a device call's tar).")
    md, png = write_aggregate(grid, records, args.out, f"python bench/campaign.py aggregate {grid.name}"
                              + ("" if args.results == RESULTS / "campaign" else f" --results {shown(args.results)}"))
    print(f"wrote {shown(md)} and {shown(png)} from {len(records)} run(s)")
    return 0


def unpack(tar_path: Path, results: Path, replace: bool = False) -> list[str]:
    """Copy the records of a device call's tar into ``results`` (only well-named, valid records)."""
    written = []
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (OSError, tarfile.TarError) as err:
        raise CampaignError(f"{tar_path.name} is not a readable tar ({err}); take the campaign_<grid>.tar the "
                            f"device call brought back.") from None
    with tar:
        for member in tar.getmembers():
            match = RECORD_NAME.fullmatch(member.name)
            if not member.isfile() or not match or member.size > MAX_RECORD_BYTES:
                print(f"  skipped {member.name!r}: not a <grid>/<config>_seed<k>.json record", flush=True)
                continue
            raw = tar.extractfile(member).read()
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                print(f"  skipped {member.name}: not JSON", flush=True)
                continue
            if (not isinstance(rec, dict) or rec.get("schema") != SCHEMA or rec.get("grid") != match["grid"]
                    or f"{rec.get('config')}_seed{rec.get('seed')}" != f"{match['config']}_seed{match['seed']}"):
                print(f"  skipped {member.name}: its contents do not match its name", flush=True)
                continue
            target = results / match["grid"] / f"{match['config']}_seed{match['seed']}.json"
            if target.exists() and not replace:
                if target.read_bytes() != raw:
                    print(f"  kept the existing {shown(target)} (differs; --replace to take the tar's)", flush=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            written.append(shown(target))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "plan", "aggregate"):
        p = sub.add_parser(name)
        p.add_argument("grid", help="grid name in bench/grids/ or a grid .yaml path")
        p.add_argument("--results", type=Path, default=RESULTS / "campaign",
                       help="folder of the per-run JSONs (<results>/<grid>/)")
        if name == "aggregate":
            p.add_argument("--out", type=Path, default=RESULTS, help="folder for campaign_<grid>.md and .png")
            continue
        p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
        p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                       help="wall seconds for this slice; a run whose estimate does not fit is not started")
        p.add_argument("--runs", type=Path, default=RUNS, help="folder of the run folders (git-ignored)")
        p.add_argument("--seeds", default=None, help="comma list (default: the grid's)")
        p.add_argument("--configs", default=None, help="comma list of configuration names (default: all)")
        p.add_argument("--restart", action="store_true", help="start unfinished runs over instead of resuming")
        p.add_argument("--jpeg", type=Path, default=None, help="the CIFAR-10 JPEG copy (default: ../shared's)")
        p.add_argument("--tar", type=Path, default=None, help="after each finished run, rewrite this tar of "
                                                              "the grid's JSONs (a device call's $OUT)")
    p = sub.add_parser("unpack", help="a device call's campaign_<grid>.tar into --results")
    p.add_argument("tar", type=Path)
    p.add_argument("--results", type=Path, default=RESULTS / "campaign")
    p.add_argument("--replace", action="store_true", help="overwrite records that differ")
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            written = unpack(args.tar, args.results, args.replace)
            print(f"unpacked {len(written)} record(s)" + "".join(f"\n  {w}" for w in written))
            return 0
        grid = load_grid(args.grid)
        if args.command != "aggregate":
            args.device_name = device_name(args.device)
        return {"run": cmd_run, "plan": cmd_plan, "aggregate": cmd_aggregate}[args.command](grid, args)
    except (GridError, CampaignError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
