"""Robust accuracy vs training-loop speed-up with seeds (paper Fig. 3), through the real CLI.

Every run is ``python -m advtrain run`` in a subprocess, every evaluation ``advtrain eval`` (PGD-50
on the whole test split, AutoAttack on the full and 0.3 rows), and the tables and plot come from
``advtrain compare``. On top of that this script reports, per fraction, the paired differences
GradMatch − random and CRAIG − random over seeds with their standard errors (compare.json), the
ideal speed-up bound next to the measured one, and the default selection attack (the training
attack) against a 2-step PGD selection attack: selection share of the loop and robust accuracy.

    python bench/tradeoff.py --grid digits --jobs 2                  # 51 runs, offline
    python bench/tradeoff.py --grid cifar10 --jobs 4 --device cpu    # CIFAR-10 JPEG copy, 14 runs
    python bench/tradeoff.py --smoke --results /tmp/tradeoff_smoke   # a minute or two: proves the pipeline
    python bench/tradeoff.py --grid digits --seeds 0 --no-aa --runs local/tradeoff_quiet --tag quiet
                                                                     # one seed, alone on the machine: timings

Finished runs (report.json present) are kept and not re-run, so an interrupted grid continues
where it stopped (``--fresh`` starts over). Runs live under ``--runs`` (default local/tradeoff/,
git-ignored); results (Markdown, JSON, tradeoff.png) go to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from _common import LOCAL, ROOT, add_results_arg, cifar_subset, command_line, machine, write_result

from advtrain.reports.compare import paired_difference


@dataclass
class Run:
    """One training run of the grid and what to evaluate on it."""

    tag: str
    selector: str
    fraction: float
    seed: int
    overrides: list[str]
    select_attack: str = "training attack"
    aa: bool = False
    path: Path = field(default=Path())


@dataclass
class Grid:
    """A dataset's recipe, schedule and evaluation settings."""

    recipe: str
    overrides: list[str]
    eps: str
    alpha: str
    select_alpha: str
    n_test: int


def grid_settings(args: argparse.Namespace) -> Grid:
    device = [f"device={args.device}"]
    schedule = [f"schedule.epochs={args.epochs}", f"schedule.warm_start_epochs={args.warm}",
                f"schedule.select_every={args.every}"]
    common = device + schedule + ["eval.every=0", f"eval.n_examples={args.train_eval}"]
    if args.smoke:
        common += ["train.max_steps_per_epoch=2"]
    if args.grid == "digits":
        # PGD-50 at the training ε = 0.2 with step 2.5·ε/50; the 2-step selection PGD steps ε/2.
        return Grid("recipes/digits_linf.yaml", common, "0.2", "0.01", "0.1", args.n_test or 100000)
    path = cifar_subset(args.n_train, args.n_test or 1000, args.jpeg)
    extra = [f"data.path={path}", "data.download=false", "data.val_fraction=0.02", "data.num_workers=0",
             f"model.name={args.model}", "attack.alpha=2/255", "attack.steps=5", "optim.lr=0.05",
             "lr_schedule=cosine", "data.batch_size=128"]
    if args.device == "cpu":
        extra.append("precision=fp32")
    return Grid("recipes/cifar10_linf.yaml", common + extra, "8/255", "2/255", "4/255", args.n_test or 1000)


def build_runs(args: argparse.Namespace, grid: Grid) -> list[Run]:
    """full per seed; each method × fraction × seed; the 2-step selection attack on the coreset methods."""
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    aa_fractions = {float(f) for f in args.aa_fractions.split(",") if f}
    runs = []
    for seed in seeds:
        if "full" in methods:
            runs.append(Run(f"full_s{seed}", "full", 1.0, seed, ["selector=full"], aa=1.0 in aa_fractions))
        for method in (m for m in methods if m != "full"):
            for f in fractions:
                base = [f"selector={method}", f"selector.fraction={f}"]
                runs.append(Run(f"{method}_{f:g}_s{seed}", method, f, seed, base, aa=f in aa_fractions))
                if method != "random" and f in {float(x) for x in args.select_attack_fractions.split(",") if x}:
                    cheap = [f"selector.attack.steps={args.select_steps}", f"selector.attack.alpha={grid.select_alpha}"]
                    runs.append(Run(f"{method}_{f:g}_sel{args.select_steps}_s{seed}", method, f, seed, base + cheap,
                                    select_attack=f"pgd-{args.select_steps}"))
    for run in runs:
        run.path = args.runs / args.grid / run.tag
        run.overrides = [*grid.overrides, *run.overrides, f"seed={run.seed}", f"name={run.tag}",
                         f"output.dir={run.path}"]
    return runs


def child_command(argv: list[str], jobs: int) -> list[str]:
    """``python -m advtrain ...``; with parallel jobs, one torch thread per child (set before any work)."""
    if jobs <= 1:
        return [sys.executable, "-m", "advtrain", *argv]
    code = ("import sys, torch; torch.set_num_threads(1); torch.set_num_interop_threads(1); "
            "from advtrain.cli import app; app(sys.argv[1:], prog_name='advtrain')")
    return [sys.executable, "-c", code, *argv]


def child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def execute(argv: list[str], log: Path, jobs: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"\n$ advtrain {' '.join(argv)}\n")
        handle.flush()
        code = subprocess.run(child_command(argv, jobs), cwd=ROOT, env=child_env(jobs), stdout=handle,
                              stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"`advtrain {argv[0]}` failed with exit code {code}; see {log}")


def train_and_eval(run: Run, grid: Grid, args: argparse.Namespace) -> str:
    """Train (unless already finished), then evaluate PGD-50 (and AutoAttack) unless already done."""
    log = run.path.parent / f"{run.tag}.log"
    start = time.perf_counter()
    if not (run.path / "report.json").is_file():
        execute(["run", grid.recipe, *run.overrides, "--overwrite"], log, args.jobs)
    ckpt = str(run.path / "last.safetensors")
    n = str(grid.n_test)
    if not (run.path / "eval" / "report.json").is_file():
        execute(["eval", ckpt, "--attack", "clean,pgd50", "--eps", grid.eps, "--alpha", grid.alpha,
                 "--n-examples", n, "--out", str(run.path / "eval"), "--device", args.device], log, args.jobs)
    if run.aa and not args.no_aa and not (run.path / "eval_aa" / "report.json").is_file():
        execute(["eval", ckpt, "--attack", "aa", "--eps", grid.eps, "--n-examples", n,
                 "--out", str(run.path / "eval_aa"), "--device", args.device], log, args.jobs)
    return f"{run.tag}: {time.perf_counter() - start:.0f}s"


def _acc(path: Path, attack: str) -> float | None:
    report = path / ("eval_aa" if attack == "aa" else "eval") / "report.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text())["robust_acc"].get(attack)


def summarise(runs: list[Run], compare: dict, args: argparse.Namespace, grid: Grid, seconds: float) -> tuple[dict, str]:
    """The benchmark's own tables on top of ``advtrain compare``'s."""
    rows = compare["rows"]
    lines = [f"# Robust accuracy vs speed-up ({args.grid}{', smoke' if args.smoke else ''})", "",
             f"Command: `{command_line()}`", "",
             f"Recipe `{grid.recipe}` with `{' '.join(grid.overrides)}`; seeds {args.seeds}; evaluation on "
             f"{grid.n_test if grid.n_test < 100000 else 'all'} test images (PGD-50 ε={grid.eps}, step "
             f"{grid.alpha}; AutoAttack on the rows marked); the last checkpoint of each run.", "",
             f"Machine: {machine()}; {len(runs)} runs, {args.jobs} at a time "
             f"({'1 torch thread each' if args.jobs > 1 else 'all threads'}); whole grid {seconds / 60:.1f} min. "
             "Timings taken while other work shares the CPU are noisy: compare speed-ups within one grid.", "",
             "## advtrain compare", ""]
    lines += compare["markdown"].split("\n", 2)[2].splitlines()
    lines += ["", "## Measured vs ideal speed-up (loop)", "",
              "| configuration | measured | ideal E/(W+(E−W)·f) | measured / ideal | selection share |",
              "|---|---|---|---|---|"]
    for r in rows:
        if r["selector"] == "full" or (r.get("speedup") or {}).get("mean") is None:
            continue
        lines.append(f"| {r['label']} | {r['speedup']['mean']:.2f}× | {r['ideal_speedup']:.2f}× | "
                     f"{r['speedup_vs_ideal']:.2f} | {100 * r['selection_share']['mean']:.1f}% |")
    cheap = []
    for r in rows:
        if r["selection_attack"] == "training attack" or "robust_by_seed" not in r:
            continue
        default = next((d for d in rows if d["selector"] == r["selector"] and d["fraction"] == r["fraction"]
                        and d["selection_attack"] == "training attack" and "robust_by_seed" in d), None)
        if default is None:
            continue
        diff, se, n = paired_difference(r["robust_by_seed"], default["robust_by_seed"])
        cheap.append({"method": r["selector"], "fraction": r["fraction"], "selection_attack": r["selection_attack"],
                      "share_default": default["selection_share"]["mean"], "share_cheap": r["selection_share"]["mean"],
                      "speedup_default": default.get("speedup", {}).get("mean"),
                      "speedup_cheap": r.get("speedup", {}).get("mean"),
                      "robust_default": default["robust_acc"]["mean"], "robust_cheap": r["robust_acc"]["mean"],
                      "diff": diff, "se": se, "n_pairs": n})
    if cheap:
        lines += ["", "## Cheaper selection attack vs the training attack", "",
                  "| method | fraction | selection attack | selection share (default → cheap) | speed-up | "
                  f"{compare['attack']} acc % (default → cheap) | paired diff (pp) ± se |",
                  "|---|---|---|---|---|---|---|"]
        for c in cheap:
            se = "–" if math.isnan(c["se"]) else f"{100 * c['se']:.2f}"
            speed = (f"{c['speedup_default']:.2f}× → {c['speedup_cheap']:.2f}×"
                     if c["speedup_default"] and c["speedup_cheap"] else "–")
            lines.append(f"| {c['method']} | {c['fraction']} | {c['selection_attack']} | "
                         f"{100 * c['share_default']:.1f}% → {100 * c['share_cheap']:.1f}% | {speed} | "
                         f"{100 * c['robust_default']:.1f} → {100 * c['robust_cheap']:.1f} | "
                         f"{100 * c['diff']:+.2f} ± {se} ({c['n_pairs']}) |")
    aa_rows = []
    for run in runs:
        aa = _acc(run.path, "aa")
        if aa is not None:
            aa_rows.append({"run": run.tag, "selector": run.selector, "fraction": run.fraction, "seed": run.seed,
                            "pgd50": _acc(run.path, "pgd50"), "aa": aa})
    if aa_rows:
        lines += ["", "## AutoAttack on the full and 0.3 rows", "", "| run | PGD-50 % | AutoAttack % |",
                  "|---|---|---|"]
        for a in aa_rows:
            pgd50 = "–" if a["pgd50"] is None else f"{100 * a['pgd50']:.1f}"
            lines.append(f"| {a['run']} | {pgd50} | {100 * a['aa']:.1f} |")
    lines += ["", "Read the paired differences with their standard errors: with 2–3 seeds a difference "
              "smaller than about two standard errors is not evidence either way."]
    record = {"machine": machine(), "command": command_line(), "grid": args.grid, "settings":
              {k: str(v) for k, v in vars(args).items()}, "recipe": grid.recipe, "overrides": grid.overrides,
              "compare": {k: v for k, v in compare.items() if k != "markdown"}, "selection_attack": cheap,
              "autoattack": aa_rows, "seconds": seconds}
    return record, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--smoke", action="store_true", help="tiny grid, 3 epochs of 2 batches: proves the pipeline")
    parser.add_argument("--seeds", default=None, help="comma list (default: digits 0,1,2; cifar10 0,1)")
    parser.add_argument("--fractions", default=None, help="default: digits 0.1,0.2,0.3,0.5; cifar10 0.3,0.5")
    parser.add_argument("--methods", default=None, help="default: digits full,random,craig,gradmatch; "
                                                        "cifar10 full,random,gradmatch")
    parser.add_argument("--select-attack-fractions", default="0.3,0.5",
                        help="fractions that also run the cheaper selection attack ('' for none)")
    parser.add_argument("--select-steps", type=int, default=2, help="PGD steps of the cheaper selection attack")
    parser.add_argument("--aa-fractions", default=None, help="rows evaluated with AutoAttack "
                                                             "(default: digits 1.0,0.3; cifar10 none)")
    parser.add_argument("--no-aa", action="store_true", help="skip AutoAttack")
    parser.add_argument("--epochs", type=int, default=None, help="default: digits 30, cifar10 15")
    parser.add_argument("--warm", type=int, default=None, help="warm-start epochs (default: epochs/5)")
    parser.add_argument("--every", type=int, default=None, help="re-select every N epochs (default: 4·epochs/15)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each with 1 torch thread when > 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jpeg", type=Path, default=None, help="CIFAR-10 JPEG copy (default: the shared one)")
    parser.add_argument("--n-train", type=int, default=5000, help="CIFAR-10 training images (the first N)")
    parser.add_argument("--n-test", type=int, default=None, help="test images evaluated (default: digits all, "
                                                                 "cifar10 1000)")
    parser.add_argument("--model", default="resnet_tiny_cifar")
    parser.add_argument("--train-eval", type=int, default=100, help="eval.n_examples of the runs' own test pass")
    parser.add_argument("--runs", type=Path, default=LOCAL / "tradeoff", help="folder for the runs")
    parser.add_argument("--tag", default="", help="suffix of the result files' name (tradeoff_<grid>_<tag>), e.g. "
                                                  "for a timing-only rerun on a quiet machine")
    parser.add_argument("--fresh", action="store_true", help="delete this grid's runs first")
    add_results_arg(parser)
    args = parser.parse_args()
    digits = args.grid == "digits"
    if args.smoke:
        defaults = {"seeds": "0,1", "fractions": "0.3", "methods": "full,random,gradmatch", "epochs": 3, "warm": 1,
                    "every": 1, "aa_fractions": "0.3", "n_test": 40, "train_eval": 16,
                    "select_attack_fractions": "0.3"}
    else:
        defaults = {"seeds": "0,1,2" if digits else "0,1", "fractions": "0.1,0.2,0.3,0.5" if digits else "0.3,0.5",
                    "methods": "full,random,craig,gradmatch" if digits else "full,random,gradmatch",
                    "epochs": 30 if digits else 15, "aa_fractions": "1.0,0.3" if digits else ""}
    for key, value in defaults.items():
        if getattr(args, key, None) is None or (args.smoke and key == "select_attack_fractions"):
            setattr(args, key, value)
    args.warm = args.warm if args.warm is not None else max(1, args.epochs // 5)
    args.every = args.every if args.every is not None else max(1, round(4 * args.epochs / 15))
    grid = grid_settings(args)
    runs = build_runs(args, grid)
    if args.fresh:
        shutil.rmtree(args.runs / args.grid, ignore_errors=True)
    print(f"{len(runs)} runs under {args.runs / args.grid}, {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(train_and_eval, run, grid, args) for run in runs]
        for future in futures:
            try:
                print(future.result(), flush=True)
            except RuntimeError as err:
                failures.append(str(err))
                print(err, flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed; finished runs are kept, re-run the same command to "
                         f"continue:\n" + "\n".join(failures))
    name = f"tradeoff_{args.grid}{'_smoke' if args.smoke else ''}{f'_{args.tag}' if args.tag else ''}"
    out = Path(args.results) / name
    execute(["compare", *(str(r.path) for r in runs), "--out", str(out), "--attack", "pgd50"],
            args.runs / args.grid / "compare.log", 1)
    compare = json.loads((out / "compare.json").read_text())
    compare["markdown"] = (out / "compare.md").read_text()
    record, text = summarise(runs, compare, args, grid, time.perf_counter() - start)
    write_result(name, record, text, args.results)
    print(text)


if __name__ == "__main__":
    main()
