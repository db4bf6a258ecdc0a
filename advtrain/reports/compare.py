"""``advtrain compare``: the robustness vs speed-up trade-off of finished runs (paper Fig. 3).

Reads each run folder's ``recipe.yaml``, ``metrics.jsonl`` and ``report.json`` (plus any
``eval*/report.json`` that ``advtrain eval`` wrote into it), groups the runs that differ only in
their seed, and writes ``compare.json``, ``compare.md`` and ``tradeoff.png``.

Timing follows the paper: the *training loop* is the training epochs plus the selection passes
(validation and checkpointing excluded); wall time is the whole ``advtrain run``. Speed-ups are
the mean loop time of the full-data runs of the same number of epochs divided by a run's loop
time. The math (grouping, paired differences, the ideal bound) is in pure functions below.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advtrain.errors import UserError
from advtrain.params import FractionError, parse_number
from advtrain.reports.run import epoch_seconds, loop_seconds

#: Keys that may differ between runs that are compared (seed groups ignore them too).
__all__ = ["compare_runs", "epoch_seconds", "ideal_speedup", "load_run", "loop_seconds", "paired_difference",
           "relative_robust_error", "run_compare"]

IGNORED_KEYS = ("seed", "name", "device", "precision", "output.", "eval.", "train.log_every",
                "train.compile", "train.channels_last", "train.data_on_device", "data.num_workers")
#: Keys that must agree: what is trained on, which network, which threat model.
COMPARABLE_KEYS = ("data.", "model.", "objective.name", "attack.norm", "attack.eps")
#: Data keys that only change loading, not the dataset.
LOADER_KEYS = ("data.batch_size", "data.num_workers", "data.augment")


@dataclass
class RunRecord:
    """One finished run as the comparison sees it."""

    path: str
    recipe: dict[str, Any]
    seed: int
    selector: str
    fraction: float
    epochs: int
    warm_start: int
    skip_epochs: int
    loop_s: float
    train_s: float
    selection_s: float
    wall_s: float
    clean_acc: float | None
    robust_acc: dict[str, float]
    n_examples: dict[str, int] = field(default_factory=dict)
    epoch_s: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- pure math
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become tuples (hashable) and numbers written as
    text (``8/255``) become floats, so ``8/255`` and ``0.0313…`` compare equal."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        elif isinstance(value, list):
            out[path] = tuple(value)
        else:
            out[path] = _number(value)
    return out


def _number(value: Any) -> Any:
    try:
        number = parse_number(value)
    except FractionError:
        return value
    return round(number, 12) if isinstance(number, float) else number


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def config_key(recipe: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What identifies a configuration: the flattened recipe without seed, names and output keys."""
    flat = flatten(recipe)
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if not _matches(k, IGNORED_KEYS)))


def incompatibilities(recipes: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Keys of dataset, model and threat model on which the runs disagree, each with its values."""
    flats = [(path, flatten(r)) for path, r in recipes]
    keys = sorted({k for _, f in flats for k in f if _matches(k, COMPARABLE_KEYS) and not _matches(k, LOADER_KEYS)})
    problems = []
    for key in keys:
        values: dict[str, list[str]] = {}
        for path, flat in flats:
            values.setdefault(repr(flat.get(key)), []).append(path)
        if len(values) > 1:
            seen = "; ".join(f"{v} in {', '.join(paths)}" for v, paths in values.items())
            problems.append(f"{key}: {seen}")
    return problems


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (0 for one value), n)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, 0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), std, len(vals)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of ``a[s] − b[s]`` over the seeds both have, its standard error and the number of pairs.

    The standard error is std(d)/√n (sample std); with one pair it is NaN (no spread to estimate).
    """
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return math.nan, math.nan, 0
    if len(diffs) == 1:
        return diffs[0], math.nan, 1
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs)


def ideal_speedup(epochs: int, warm_start: int, fraction: float, skip_epochs: int = 0) -> float:
    """Loop speed-up with free selection: E / (W + (E − W − S)·f), S the reference variant's skipped epochs."""
    trained = warm_start + (epochs - warm_start - skip_epochs) * fraction
    return epochs / trained if trained > 0 else math.inf


def relative_robust_error(acc: float, full_acc: float) -> float:
    """Robust error increase over full training, relative to full training's error (0 = as robust)."""
    full_err = 1.0 - full_acc
    return ((1.0 - acc) - full_err) / full_err if full_err > 0 else math.nan


# ----------------------------------------------------------------------------------- reading runs
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read '{path}' ({err}); is this a finished advtrain run folder?") from None
    except json.JSONDecodeError as err:
        raise UserError(f"'{path}' is not valid JSON (line {err.lineno}: {err.msg}); the run may have "
                        f"been cut off, re-run it or leave it out of the comparison.") from None


def load_run(path: Path) -> RunRecord:
    """Read one finished run folder; a clear :class:`UserError` names whatever is missing."""
    if not path.is_dir():
        raise UserError(f"'{path}' is not a run folder; give folders that `advtrain run` wrote "
                        f"(each holds recipe.yaml, metrics.jsonl and report.json).")
    for name in ("recipe.yaml", "metrics.jsonl", "report.json"):
        if not (path / name).is_file():
            raise UserError(f"'{path}' has no {name}: compare needs finished runs (recipe.yaml, "
                            f"metrics.jsonl, report.json); finish it with `advtrain run ... --resume`.")
    try:
        recipe = yaml.safe_load((path / "recipe.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read '{path / 'recipe.yaml'}': {str(err).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("selector"), dict):
        raise UserError(f"'{path / 'recipe.yaml'}' is not a resolved advtrain recipe (no selector section).")
    metrics = []
    for i, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
        if line.strip():
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"'{path / 'metrics.jsonl'}' line {i} is not JSON; the run's metrics are "
                                f"damaged.") from None
    report = _read_json(path / "report.json")
    schedule = recipe.get("schedule") or {}
    selector = recipe["selector"]
    name = str(selector.get("name"))
    loop_s, train_s, selection_s = loop_seconds(metrics)
    test = report.get("test") or {}
    clean = test.get("clean_acc")
    robust = dict(test.get("robust_acc") or {})
    n_examples = {k: int(test.get("n_examples", 0)) for k in ["clean", *robust]}
    for eval_dir in sorted(p for p in path.glob("eval*") if (p / "report.json").is_file()):
        ev = _read_json(eval_dir / "report.json")
        n = int(ev.get("n_examples", 0))
        if ev.get("split", "test") != "test":
            continue
        if ev.get("clean_acc") is not None and n >= n_examples.get("clean", 0):
            clean, n_examples["clean"] = ev["clean_acc"], n
        for attack, acc in (ev.get("robust_acc") or {}).items():
            if n >= n_examples.get(attack, 0):
                robust[attack], n_examples[attack] = acc, n
    return RunRecord(
        path=str(path), recipe=recipe, seed=int(recipe.get("seed", 0)), selector=name,
        fraction=1.0 if name == "full" else float(selector.get("fraction", 1.0)),
        epochs=int(schedule.get("epochs", len(metrics))), warm_start=int(schedule.get("warm_start_epochs", 0)),
        skip_epochs=int(schedule.get("skip_epochs", 0)), loop_s=loop_s, train_s=train_s,
        selection_s=selection_s, wall_s=float(report.get("wall_seconds", math.nan)), clean_acc=clean,
        robust_acc=robust, n_examples=n_examples, epoch_s=epoch_seconds(metrics))


# ----------------------------------------------------------------------------------- comparison
def pick_attack(runs: Sequence[RunRecord], wanted: str | None) -> str | None:
    """The robust metric to compare: ``wanted``, else AutoAttack if every run has it, else the
    strongest attack every run was evaluated with (lowest mean accuracy)."""
    common = set.intersection(*(set(r.robust_acc) for r in runs)) if runs else set()
    if wanted is not None:
        if wanted not in common:
            have = ", ".join(sorted(common)) or "none"
            raise UserError(f"--attack {wanted}: not evaluated in every run (attacks all runs have: {have}); "
                            f"run `advtrain eval RUN/best.safetensors --attack {wanted}` on the others.")
        return wanted
    if not common:
        return None
    if "aa" in common:
        return "aa"
    return min(sorted(common), key=lambda a: statistics.fmean(r.robust_acc[a] for r in runs))


def group_label(key: tuple, varying: list[str], selection_attack: str) -> str:
    """``gradmatch f=0.3``, plus the selection attack when not the training one and whatever else varies."""
    flat = dict(key)
    selector = str(flat.get("selector.name", "'?'")).strip("'")
    parts = [selector]
    if selector != "full":
        parts.append(f"f={flat.get('selector.fraction', '?')}")
    if selection_attack != "training attack":
        parts.append(f"select:{selection_attack}")
    parts += [f"{k}={flat[k]}" for k in varying if k in flat]
    return " ".join(parts)


def varying_keys(keys: Sequence[tuple]) -> dict[str, list[str]]:
    """Per selector, the recipe keys whose values differ between its configurations (selector
    fraction and selection attack left out: the label names those itself)."""
    by_selector: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        flat = dict(key)
        by_selector.setdefault(str(flat.get("selector.name")), []).append(flat)
    out = {}
    for name, flats in by_selector.items():
        all_keys = sorted({k for f in flats for k in f})
        out[name] = [k for k in all_keys if len({f.get(k) for f in flats}) > 1
                     and k != "selector.fraction" and not k.startswith("selector.attack")]
    return out


def compare_runs(runs: Sequence[RunRecord], attack: str | None = None) -> dict[str, Any]:
    """Group, time and score the runs; the whole comparison as a JSON-ready dict."""
    problems = incompatibilities([(r.path, r.recipe) for r in runs])
    if problems:
        raise UserError("these runs are not comparable (different dataset, model or threat model): "
                        + "; ".join(problems) + ". Compare runs of one dataset, model and threat model.")
    metric = pick_attack(runs, attack)
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(config_key(run.recipe), []).append(run)
    for members in groups.values():
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise UserError(f"runs {', '.join(r.path for r in members if r.seed in dup)} have the same "
                            f"configuration and seed {dup[0]}: give each configuration's seeds once.")
    varying = varying_keys(list(groups))
    full = {}
    for members in groups.values():
        if members[0].selector == "full":
            full.setdefault(members[0].epochs, []).extend(members)
    rows = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: r.seed)
        first = members[0]
        ref = full.get(first.epochs, [])
        ref_loop = statistics.fmean(r.loop_s for r in ref) if ref else None
        ref_wall = statistics.fmean(r.wall_s for r in ref) if ref else None
        ref_robust = statistics.fmean(r.robust_acc[metric] for r in ref) if ref and metric else None
        own = varying[str(dict(key).get("selector.name"))]
        row: dict[str, Any] = {
            "label": group_label(key, own, _selection_attack_label(first.recipe)), "selector": first.selector,
            "fraction": first.fraction, "epochs": first.epochs, "warm_start": first.warm_start,
            "selection_attack": _selection_attack_label(first.recipe),
            "seeds": [r.seed for r in members], "n": len(members), "runs": [r.path for r in members],
            "config": {k: dict(key)[k] for k in own if k in dict(key)},
            "ideal_speedup": ideal_speedup(first.epochs, first.warm_start, first.fraction, first.skip_epochs),
        }
        for name, values in (("loop_s", [r.loop_s for r in members]), ("wall_s", [r.wall_s for r in members]),
                             ("selection_share", [r.selection_s / r.loop_s if r.loop_s else 0.0 for r in members]),
                             ("clean_acc", [r.clean_acc for r in members if r.clean_acc is not None])):
            row[name] = _stat(values)
        if ref_loop:
            row["speedup"] = _stat([ref_loop / r.loop_s for r in members if r.loop_s > 0])
            row["wall_speedup"] = _stat([ref_wall / r.wall_s for r in members if r.wall_s > 0])
            row["speedup_vs_ideal"] = row["speedup"]["mean"] / row["ideal_speedup"]
        if metric:
            accs = [r.robust_acc[metric] for r in members]
            row["robust_acc"] = _stat(accs)
            row["robust_by_seed"] = {r.seed: r.robust_acc[metric] for r in members}
            if ref_robust is not None:
                row["relative_robust_error"] = _stat([relative_robust_error(a, ref_robust) for a in accs])
        row["epoch_s"] = {p: statistics.fmean(r.epoch_s[p] for r in members if p in r.epoch_s)
                          for p in ("full", "coreset") if any(p in r.epoch_s for r in members)}
        row["all_robust_acc"] = {a: _stat([r.robust_acc[a] for r in members if a in r.robust_acc])
                                 for a in sorted({a for r in members for a in r.robust_acc})}
        rows.append(row)
    rows.sort(key=lambda r: (r["selector"] != "full", r["selector"], -r["fraction"], r["label"]))
    per_run = []
    for run in runs:
        ref = full.get(run.epochs, [])
        ref_loop = statistics.fmean(r.loop_s for r in ref) if ref else None
        ref_wall = statistics.fmean(r.wall_s for r in ref) if ref else None
        per_run.append({
            "path": run.path, "selector": run.selector, "fraction": run.fraction, "warm_start": run.warm_start,
            "seed": run.seed, "selection_attack": _selection_attack_label(run.recipe), "loop_s": run.loop_s,
            "selection_s": run.selection_s, "wall_s": run.wall_s,
            "speedup": ref_loop / run.loop_s if ref_loop and run.loop_s else None,
            "wall_speedup": ref_wall / run.wall_s if ref_wall and run.wall_s else None,
            "clean_acc": run.clean_acc, "robust_acc": run.robust_acc.get(metric) if metric else None,
            "all_robust_acc": run.robust_acc, "n_examples": run.n_examples})
    return {"attack": metric, "n_runs": len(runs), "rows": rows, "runs": per_run, "paired": _paired(rows),
            "reference": "full-data runs of the same number of epochs" if full else None}


def _selection_attack_label(recipe: dict[str, Any]) -> str:
    attack = (recipe.get("selector") or {}).get("attack")
    if not isinstance(attack, dict):
        return "training attack"
    steps = attack.get("steps")
    return f"{attack.get('name')}" + (f"-{steps}" if steps is not None else "")


def _stat(values: Sequence[float]) -> dict[str, float]:
    mean, std, n = mean_std(values)
    return {"mean": mean, "std": std, "n": n}


def _paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Coreset − random robust accuracy, paired by seed, for rows of the same fraction and schedule."""
    out = []
    randoms = [r for r in rows if r["selector"] == "random" and "robust_by_seed" in r]
    for row in rows:
        if row["selector"] in ("full", "random") or "robust_by_seed" not in row:
            continue
        if row["selection_attack"] != "training attack":
            continue
        for rand in randoms:
            if (rand["fraction"], rand["epochs"], rand["warm_start"]) != (row["fraction"], row["epochs"],
                                                                         row["warm_start"]):
                continue
            mean, se, n = paired_difference(row["robust_by_seed"], rand["robust_by_seed"])
            out.append({"method": row["selector"], "fraction": row["fraction"], "versus": rand["label"],
                        "label": row["label"], "diff": mean, "se": se, "n_pairs": n})
    return out


# ----------------------------------------------------------------------------------- outputs
def _pm(stat: dict[str, float] | None, scale: float = 1.0, fmt: str = ".1f") -> str:
    if not stat or not stat.get("n"):
        return "–"
    return f"{stat['mean'] * scale:{fmt}} ± {stat['std'] * scale:{fmt}} ({stat['n']})"


def markdown(result: dict[str, Any]) -> str:
    metric = result["attack"] or "none"
    lines = [
        "# advtrain compare", "",
        f"- {result['n_runs']} runs; robust accuracy under **{metric}** (test split); mean ± std (n seeds)",
        "- loop = training epochs + selection passes (the paper's timing); speed-up = mean loop time of the "
        "full-data runs of the same epochs / the run's loop time; ideal = E / (W + (E − W)·f)",
        "- rel. robust error = (robust error − full's) / full's robust error", "",
        "| configuration | seeds | loop s | wall s | selection share | speed-up (loop) | ideal | "
        "speed-up (wall) | clean acc % | robust acc % | rel. robust error % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {','.join(map(str, r['seeds']))} | {_pm(r['loop_s'])} | {_pm(r['wall_s'])} | "
            f"{_pm(r['selection_share'], 100)}% | {_pm(r.get('speedup'), 1, '.2f')} | {r['ideal_speedup']:.2f} | "
            f"{_pm(r.get('wall_speedup'), 1, '.2f')} | {_pm(r['clean_acc'], 100)} | "
            f"{_pm(r.get('robust_acc'), 100)} | {_pm(r.get('relative_robust_error'), 100)} |")
    lines += ["", "## Runs", "", "| run | selector | fraction | warm start | seed | selection attack | loop s | "
              "wall s | speed-up (loop / wall) | clean % | robust % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        speed = f"{r['speedup']:.2f} / {r['wall_speedup']:.2f}" if r["speedup"] and r["wall_speedup"] else "–"
        clean = "–" if r["clean_acc"] is None else f"{100 * r['clean_acc']:.1f}"
        robust = "–" if r["robust_acc"] is None else f"{100 * r['robust_acc']:.1f}"
        lines.append(f"| {r['path']} | {r['selector']} | {r['fraction']:g} | {r['warm_start']} | {r['seed']} | "
                     f"{r['selection_attack']} | {r['loop_s']:.1f} | {r['wall_s']:.1f} | {speed} | {clean} | "
                     f"{robust} |")
    if result["paired"]:
        lines += ["", f"## Paired differences in {metric} robust accuracy (same seeds), coreset − random", "",
                  "| method | fraction | difference (pp) | standard error (pp) | pairs |", "|---|---|---|---|---|"]
        for p in result["paired"]:
            se = "–" if math.isnan(p["se"]) else f"{100 * p['se']:.2f}"
            lines.append(f"| {p['label']} | {p['fraction']} | {100 * p['diff']:+.2f} | {se} | {p['n_pairs']} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, result: dict[str, Any]) -> None:
    """Relative robust error vs speed-up, one line per selector (and selection attack), error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advtrain.io.checkpoint import write_atomically

    fig, ax = plt.subplots(figsize=(6, 4))
    use_speedup = all("speedup" in r for r in result["rows"])
    yname = "relative_robust_error" if all("relative_robust_error" in r for r in result["rows"]) else "robust_acc"
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        if yname not in r:
            continue
        name = r["selector"] if r["selection_attack"] == "training attack" else \
            f"{r['selector']} (select: {r['selection_attack']})"
        if r["selector"] != "full" and r["warm_start"]:
            name += f", warm {r['warm_start']}"
        lines.setdefault(name, []).append(r)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["speedup"]["mean"] if use_speedup else r["loop_s"]["mean"])
        xs = [r["speedup"]["mean"] if use_speedup else r["loop_s"]["mean"] for r in rows]
        xerr = [r["speedup"]["std"] if use_speedup else r["loop_s"]["std"] for r in rows]
        ys = [100 * r[yname]["mean"] for r in rows]
        yerr = [100 * r[yname]["std"] for r in rows]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            if r["selector"] != "full":
                ax.annotate(f"{r['fraction']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("speed-up of the training loop (×)" if use_speedup else "training-loop time (s)")
    ax.set_ylabel(f"relative robust error ({result['attack']}, %)" if yname == "relative_robust_error"
                  else f"robust accuracy ({result['attack']}, %)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def run_compare(run_dirs: Sequence[Path], out: Path | None, attack: str | None = None) -> dict[str, Any]:
    """Read, compare and write ``compare.{md,json}`` and ``tradeoff.png`` into ``out``."""
    from advtrain.io.checkpoint import write_atomically
    from advtrain.io.run_files import write_json

    if not run_dirs:
        raise UserError("give at least one run folder, e.g. `advtrain compare runs/full runs/gradmatch`.")
    runs = [load_run(Path(p)) for p in run_dirs]
    result = compare_runs(runs, attack)
    from advtrain.io.outputs import claim_output_dir

    out = claim_output_dir(Path(out) if out is not None else Path("compare"), command="compare",
                           files=("compare.json", "compare.md", "tradeoff.png"))
    write_json(out / "compare.json", result)
    text = markdown(result)
    write_atomically(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    plot(out / "tradeoff.png", result)
    return result
