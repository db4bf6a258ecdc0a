"""Coreset solver time: CRAIG and GradMatch at CIFAR-10 scale, sample-level per class and batch-wise.

    python bench/solvers.py                 # CPU: N = 5k and 50k with the cells a CPU can do in minutes
    python bench/solvers.py --device cuda --big
    python bench/solvers.py --scale         # sample-wise GradMatch on 50k × 5130 (k = 2.5k, 12.5k, 25k)
                                            # and CRAIG per class on 10 × 5000, exact vs fast solvers,
                                            # on random and on last-layer (rank-one) features
    python bench/solvers.py --scale --append --only gradmatch-fast-25000-clustered-lowrank
                                            # add rows to the committed table (class-clustered
                                            # features: advtrain/selection/synthetic.py)
    python bench/solvers.py --scale --append --n 10000 --hidden 128 --only ...   # smaller rows
    python bench/solvers.py --craig --n 10000          # CRAIG per class, host loop vs batched greedy
    python bench/solvers.py --craig --device cuda      # the same at 50,000 × 10 on the GPU (issue 22)

The ``--scale`` cells run each in a fresh process so the peak resident memory (``ru_maxrss``,
the 1 GiB feature matrix included) belongs to that cell alone; matching error is
‖Σ_S w_j g_j − Σ_i g_i‖ / ‖Σ_i g_i‖ of the returned (indices, weights).

Features have the shapes of ResNet-18's last layer on CIFAR-10 (D = 10 + 10·512 = 5130; bias only:
D = 10). The default cells use random rows and run through the registered selectors, exactly as a
training run calls them (budget 50% of N). The ``--scale`` cells come in two kinds: random rows
(no structure, the dense path) and last-layer cross-entropy gradients (rank one per sample, which
the solvers detect and exploit: see ``advtrain/selection/gram.py``), and ``clustered-<structure>``:
last-layer gradients on class-clustered embeddings with a trained-like head, as a trained network's
are (``advtrain/selection/synthetic.py``; no trained CIFAR model is at hand to take real ones from).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _common import add_results_arg, command_line, machine, write_result

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


def craig_greedy_rows(n: int, dims: list[int], device: str, repeats: int) -> list[dict]:
    """CRAIG per class (10 balanced classes, budget 50%, sample level) through the selector, with the
    per-pick host loop and with the batched sync-free greedy; both must give the same coreset."""
    rows = []
    for d in dims:
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(n, d, generator=gen).to(device)
        labels = torch.arange(n) % 10
        params = CraigParams(fraction=0.5, granularity="sample", per_class=True)
        picks = {}
        for greedy in ("host", "batched"):
            times = []
            for _ in range(repeats):
                sel = SELECTORS.get("craig").build(params)
                sel.device_greedy = greedy == "batched"
                start = time.perf_counter()
                picks[greedy] = sel(feats, labels, generator=torch.Generator().manual_seed(0), batch_size=128)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            rows.append({"n": n, "d": d, "greedy": greedy, "seconds": statistics.median(times),
                         "load_before": [round(v, 2) for v in os.getloadavg()]})
            print(rows[-1], flush=True)
        same = torch.equal(picks["host"].indices, picks["batched"].indices)
        for r in rows[-2:]:
            r["same_coreset"] = same
    return rows


def _craig_section(runs: list[dict]) -> list[str]:
    lines = ["## CRAIG per class: per-pick host loop vs batched greedy", "",
             "10 balanced classes, budget 50% (k = n/20 per class), sample level, through the selector. "
             "`host`: the lazy greedy reading its argmax on the host at every pick; `batched`: all classes "
             "advance together with no host sync per pick (`advtrain/selection/solvers/craig_batched.py`), "
             "default on CUDA. Same coreset = identical indices from both. Load = `os.getloadavg()` before.", ""]
    for run_ in runs:
        lines += [f"Command: `{run_['command']}`", "", f"Machine: {run_['machine']}", "",
                  "| N | D | greedy | seconds | same coreset | load before |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['d']} | {r['greedy']} | {r['seconds']:.2f} | {r['same_coreset']} | "
                  f"{r['load_before']} |" for r in run_["rows"]]
        lines.append("")
    return lines


def _solvers_report(record: dict) -> str:
    lines = ["# Coreset solver time (budget 50%)", ""]
    if record.get("rows"):
        lines += [f"Command: `{record['command']}`", "", f"Machine: {record['machine']}", "",
                  "Batch-wise uses mini-batches of 128 (N/128 candidates). Per class: 10 balanced classes.", "",
                  "| solver | N | D | granularity | per class | seconds |", "|---|---|---|---|---|---|"]
        for r in record["rows"]:
            value = f"{r['seconds']:.2f}" if r["seconds"] is not None else r["note"]
            lines.append(f"| {r['solver']} | {r['n']} | {r['d']} | {r['granularity']} | {r['per_class']} | {value} |")
        lines.append("")
    if record.get("craig_greedy"):
        lines += _craig_section(record["craig_greedy"])
    return "\n".join(lines)


def run(name: str, n: int, d: int, granularity: str, per_class: bool, device: str, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=gen).to(device)
    labels = torch.arange(n) % 10
    cls = CraigParams if name == "craig" else GradMatchParams
    params = cls(fraction=0.5, granularity=granularity, per_class=per_class)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        SELECTORS.get(name).build(params)(feats, labels, generator=torch.Generator().manual_seed(r),
                                          batch_size=128)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SCALE = [  # (kind, solver, k, features): GradMatch on all 50k samples, CRAIG per class over 10 × 5000
    ("gradmatch", "exact", 2_500, "random"), ("gradmatch", "fast", 2_500, "random"),
    ("gradmatch", "exact", 12_500, "random"), ("gradmatch", "fast", 12_500, "random"),
    ("gradmatch", "exact", 25_000, "random"), ("gradmatch", "fast", 25_000, "random"),
    ("gradmatch", "fast-fill", 25_000, "random"),
    ("craig", "exact", 2_500, "random"), ("craig", "lazy", 2_500, "random"), ("craig", "stochastic", 2_500, "random"),
    ("gradmatch", "exact", 2_500, "lastlayer"), ("gradmatch", "fast", 2_500, "lastlayer"),
    ("gradmatch", "fast", 12_500, "lastlayer"), ("gradmatch", "fast", 25_000, "lastlayer"),
    ("gradmatch", "fast-fill", 25_000, "lastlayer"),
    ("craig", "exact", 2_500, "lastlayer"), ("craig", "lazy", 2_500, "lastlayer"),
    ("craig", "stochastic", 2_500, "lastlayer"),
    *[("gradmatch", "fast", k, "clustered-lowrank") for k in (2_500, 12_500, 25_000)],
    ("gradmatch", "fast", 25_000, "clustered-collapsed"), ("gradmatch", "fast", 25_000, "clustered-shared"),
    ("gradmatch", "fast-fill", 25_000, "clustered-lowrank"), ("craig", "lazy", 2_500, "clustered-lowrank"),
]


def scale_features(kind: str, n: int, dim: int) -> torch.Tensor:
    """``random``: N(0, 1) rows (no structure: the solvers' dense path). ``lastlayer``: what a training run
    hands the solvers, cross-entropy gradients of a 10-class linear layer on 512-d ReLU embeddings
    (D = 10 + 10·512), rank one per sample; rows c·5000 … (c+1)·5000 − 1 have label c."""
    gen = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randn(n, dim, generator=gen)
    if kind.startswith("clustered-"):
        from advtrain.selection.synthetic import clustered_features

        return clustered_features(n, 10, dim // 10 - 1, structure=kind.split("-", 1)[1], seed=0)[0]
    from advtrain.objectives.lastlayer import cross_entropy_grads

    classes = 10
    hidden = dim // classes - 1
    labels = torch.arange(n) // (n // classes)
    logits = 2.0 * torch.randn(n, classes, generator=gen)
    logits[torch.arange(n), labels] += 2.0  # a model that is right more often than not
    return cross_entropy_grads(logits, torch.relu(torch.randn(n, hidden, generator=gen)), labels)


def scale_cell(kind: str, solver: str, k: int, dim: int, features: str = "random", n: int = 50_000) -> dict:
    """One ``--scale`` cell, in this process: seconds, quality, peak memory."""
    from advtrain.selection.solvers import batch_omp, facility_location, orthogonal_matching_pursuit

    feats = scale_features(features, n, dim)
    out: dict = {"kind": kind, "solver": solver, "n": n, "d": dim, "k": k, "features": features}
    start = time.perf_counter()
    cpu0 = time.process_time()
    if kind == "gradmatch":
        target = feats.sum(dim=0, dtype=torch.float64)
        if solver == "exact":
            idx, w = orthogonal_matching_pursuit(feats, k, target=target, max_gram_bytes=3 * 2**30)
        else:
            idx, w = batch_omp(feats, k, target=target, generator=torch.Generator().manual_seed(0),
                               surplus="none" if solver == "fast-fill" else "match")
        out["seconds"] = time.perf_counter() - start
        out["solver_cpu_seconds"] = time.process_time() - cpu0
        approx = torch.zeros_like(target)
        for s in range(0, len(idx), 4096):
            approx += w[s:s + 4096].double() @ feats[idx[s:s + 4096]].double()
        out["matching_error"] = float((approx - target).norm() / target.norm())
        out["support"] = int(len(idx))
        out["unique"] = int(len(torch.unique(idx)))
        out["weight_sum_over_n"] = float(w.double().sum()) / n
        out["weights_below_1pct_of_n_over_k"] = int((w.double() < 0.01 * n / k).sum())  # riders that carry ~nothing
    else:  # CRAIG per class: 10 classes of 5000, k/10 each; objective Σ_i min_j d_ij summed over classes
        per_class, size = k // 10, n // 10
        x = feats.double() if solver == "exact" else feats
        total = 0.0
        solver_s = 0.0
        for c in range(10):
            rows = x[c * size:(c + 1) * size]
            t0 = time.perf_counter()
            idx, _ = facility_location(rows, per_class, stochastic_eps=0.01 if solver == "stochastic" else None,
                                       generator=torch.Generator().manual_seed(c), structure=solver != "exact")
            solver_s += time.perf_counter() - t0
            chosen = rows[idx].double()
            r64 = rows.double()
            d = (r64.pow(2).sum(1)[:, None] + chosen.pow(2).sum(1)[None] - 2 * r64 @ chosen.T).clamp_min(0)
            total += float(d.min(dim=1).values.sum())
        out["seconds"] = solver_s  # the solver calls alone (the float64 objective check is not timed)
        out["solver_cpu_seconds"] = time.process_time() - cpu0
        out["sum_min_distance"] = total
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_gib"] = usage.ru_maxrss / 2**20
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # whole process (both threads), feature generation included
    return out


def run_scale(cells: list[tuple[str, str, int, str]], timeout: int, n: int, dim: int) -> list[dict]:
    rows = []
    for kind, solver, k, features in cells:
        k = k * n // 50_000  # the same fractions of a smaller set
        load = os.getloadavg()
        cmd = [sys.executable, __file__, "--cell", f"{kind},{solver},{k},{dim},{features},{n}"]
        base = {"kind": kind, "solver": solver, "n": n, "d": dim, "k": k, "features": features}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                **base, "note": done.stderr.strip().splitlines()[-1][:200]}
        except subprocess.TimeoutExpired:
            row = {**base, "note": f"did not finish in {timeout} s"}
        row["load_before"] = [round(v, 2) for v in load]
        rows.append(row)
        print(row, flush=True)
    return rows


_SCALE_INTRO = (
    "float32 features (50,000 × 5,130 = 1 GiB unless the row says otherwise), three kinds: `random`, "
    "N(0, 1) rows with no structure (the solvers' dense path); `lastlayer`, cross-entropy gradients of a "
    "10-class linear layer on 512-d ReLU embeddings unrelated to the class: rank one per sample, so the "
    "solvers detect it and take Gram blocks from the factors (`advtrain/selection/gram.py`); and "
    "`clustered-<structure>`, the same gradients on class-clustered embeddings with a trained-like head, "
    "as a trained network's are (`advtrain/selection/synthetic.py`: `lowrank` = each class a thin slab, "
    "`collapsed` = tight isotropic clusters, `shared` = one low-dimensional subspace for all classes). "
    "GradMatch: sample-wise, the whole set, target Σ g_i; matching error ‖Σ_S w_j g_j − Σ_i g_i‖ / "
    "‖Σ_i g_i‖ computed by the bench in float64 against the float32 features themselves (not the "
    "solver's report); returned = elements returned (unique = distinct ones; the budget is k); Σw/n = "
    "the weights' sum over n. CRAIG: per class, 10 classes × n/10, k/10 each; its quality column is "
    "Σ_i min_{j∈S} ‖g_i − g_j‖² summed over the classes (lower is better), and its time is the ten "
    "solver calls alone. `exact` = the references (one-atom OMP; float64 dense CRAIG). Peak = the "
    "cell's process max RSS, features included. Load = `os.getloadavg()` (1, 5, 15 min) just before "
    "the cell: the machine is shared, so wall and CPU seconds grow with the load.")


def _scale_table(rows: list[dict]) -> list[str]:
    lines = ["| features | n × D | solver | kind | k | wall s | CPU s (2 threads) | matching error / Σ min d "
             "| returned (unique) | weights < 0.01·n/k | Σw/n | peak GiB | load before |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        features = r.get("features", "random")
        shape = f"{r.get('n', 50_000):,} × {r.get('d', 5_130):,}"
        if "note" in r:
            lines.append(f"| {features} | {shape} | {r['solver']} | {r['kind']} | {r['k']} | {r['note']} "
                         f"| | | | | | | {r['load_before']} |")
            continue
        quality = (f"{r['matching_error']:.3g}" if r["kind"] == "gradmatch" else f"{r['sum_min_distance']:.6g}")
        returned = f"{r['support']} ({r['unique']})" if "unique" in r else str(r.get("support", ""))
        wsum = f"{r['weight_sum_over_n']:.3f}" if "weight_sum_over_n" in r else ""
        lines.append(f"| {features} | {shape} | {r['solver']} | {r['kind']} | {r['k']} | {r['seconds']:.1f} | "
                     f"{r['solver_cpu_seconds']:.1f} | {quality} | {returned} | "
                     f"{r.get('weights_below_1pct_of_n_over_k', '')} | {wsum} | {r['peak_gib']:.2f} | "
                     f"{r['load_before']} |")
    return lines


def scale_report(runs: list[dict]) -> str:
    """Every run's rows under its own command and machine (older runs first: they measured older code)."""
    lines = ["# Solvers at full scale (CPU)", "", _SCALE_INTRO, ""]
    for i, run_ in enumerate(runs):
        lines += [f"## Run {i + 1}" + (f": {run_['title']}" if run_.get("title") else ""), "",
                  f"Command: `{run_['command']}`", "", f"Machine: {run_['machine']}", ""]
        if run_.get("note"):
            lines += [run_["note"], ""]
        lines += _scale_table(run_["rows"]) + [""]
    return "\n".join(lines)


def _load_runs(path: str) -> list[dict]:
    """The committed runs of the --scale table (the file's first form held one run at the top level)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        record = json.load(f)
    return record["runs"] if "runs" in record else [{k: record[k] for k in ("machine", "command", "rows")}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--big", action="store_true", help="include per-class sample-level at N=50k, D=5130")
    parser.add_argument("--scale", action="store_true", help="50k sample-wise cells, one process each")
    parser.add_argument("--only", default="", help="with --scale: comma-separated cells kind-solver-k-features "
                                                   "(e.g. gradmatch-fast-25000-lastlayer), in run order")
    parser.add_argument("--timeout", type=int, default=900, help="with --scale: seconds per cell")
    parser.add_argument("--n", type=int, default=50_000, help="with --scale: samples (k scales with it)")
    parser.add_argument("--hidden", type=int, default=512, help="with --scale: embedding width H (D = 10(H + 1))")
    parser.add_argument("--append", action="store_true", help="with --scale: keep the committed runs, add this one")
    parser.add_argument("--title", default="", help="with --scale: heading of this run in the table")
    parser.add_argument("--craig", action="store_true",
                        help="CRAIG per class, host loop vs batched greedy, at --n samples (default 50,000) and "
                             "--dims; adds a run to solvers_<device>, keeping the earlier rows")
    parser.add_argument("--dims", default="10", help="with --craig: comma-separated feature dimensions")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    add_results_arg(parser)  # the default run and --craig: read and extend <out>/solvers_<device>.json
    args = parser.parse_args()
    if args.cell:
        kind, solver, k, dim, features, n = args.cell.split(",")
        print(json.dumps(scale_cell(kind, solver, int(k), int(dim), features, int(n))))
        return
    if args.scale:
        wanted = args.only.split(",") if args.only else None
        def name(c: tuple) -> str:
            return "-".join(str(v) for v in c)

        cells = [c for c in SCALE if wanted is None or name(c) in wanted]
        rows = run_scale(sorted(cells, key=lambda c: wanted.index(name(c))) if wanted else cells, args.timeout,
                         args.n, 10 * (args.hidden + 1))
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "solvers_scale_cpu.json")
        runs = _load_runs(path) if args.append else []
        runs.append({"title": args.title, "machine": machine(), "command": command_line(), "rows": rows})
        write_result("solvers_scale_cpu", {"runs": runs}, scale_report(runs))
        return
    result = f"solvers_{args.device.split(':')[0]}"
    path = os.path.join(args.results, f"{result}.json")
    record: dict = {}
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
    if args.craig:
        rows = craig_greedy_rows(args.n, [int(d) for d in args.dims.split(",")], args.device, args.repeats)
        record.setdefault("craig_greedy", []).append({"machine": machine(), "command": command_line(), "rows": rows})
        write_result(result, record, _solvers_report(record), args.results)
        return
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
    record.update({"machine": machine(), "command": command_line(), "rows": rows})
    write_result(result, record, _solvers_report(record), args.results)


if __name__ == "__main__":
    main()
