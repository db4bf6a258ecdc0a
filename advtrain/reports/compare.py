"""``advtrain compare``: the robustness vs speed-up trade-off of finished runs (paper Fig. 3).

Reads each run folder (:mod:`advtrain.reports.run_records`: ``recipe.yaml``, ``metrics.jsonl``,
``report.json`` and any ``eval*/report.json`` that ``advtrain eval`` wrote into it), groups the
runs that differ only in their seed, and writes ``compare.json``, ``compare.md`` and ``tradeoff.png``.

Timing follows the paper: the *training loop* is the training epochs plus the selection passes
(validation and checkpointing excluded); wall time is the whole ``advtrain run``. Two speed-ups,
each saying its reference:

- **own full epochs** (the headline): E × the run's median full-data (warm-start) epoch / its loop
  time. Both sides are timed in one process, so a machine that was busier during one run than
  another does not enter it.
- **vs full runs**: the mean loop time of the full-data runs of the same number of epochs / the
  run's loop time. It divides times of different processes; when the runs' full-data epochs took
  different times beyond their own spread, a warning says the machine's load differed.

Degenerate statistics (no value, a value that is not finite, a relative error against a 100%
robust reference) are ``None`` in the JSON with a ``note`` saying why, and "–" in the tables. The
math (grouping, paired differences, the ideal bound) is in pure functions below.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from advtrain.attacks import section_threat
from advtrain.errors import UserError
from advtrain.io.checkpoint import RUNTIME_KEY_PATHS
from advtrain.params import FractionError, parse_number
from advtrain.reports.run import epoch_seconds, loop_seconds, split_line
from advtrain.reports.run_records import DamagedRunError, RunRecord, load_run

__all__ = ["compare_runs", "epoch_seconds", "ideal_speedup", "load_run", "load_runs", "loop_seconds",
           "paired_difference", "relative_robust_error", "run_compare", "timing_warnings"]

#: Keys that may differ between runs that are compared (seed groups ignore them too): with the
#: runtime choices a checkpoint may also resume across (compilation, fused update, folded attack view).
IGNORED_KEYS = ("seed", "name", "device", "precision", "output.", "eval.", "train.log_every", *RUNTIME_KEY_PATHS,
                "train.channels_last", "train.data_on_device", "data.num_workers")
#: The training attack's threat model (metric and bound, from its params' ``threat()``), compared as one key.
THREAT_KEY = "attack threat model"
#: Keys that must agree: what is trained on, which network, which threat model.
COMPARABLE_KEYS = ("data.", "model.", "objective.name", THREAT_KEY)
#: Data keys that only change loading, not the dataset.
LOADER_KEYS = ("data.batch_size", "data.num_workers", "data.augment")
#: Full-data epochs of two runs whose medians differ by less than this are taken as timed alike,
#: however tight each run's own spread is (a few percent is ordinary run-to-run jitter).
TIMING_TOLERANCE = 0.10


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
            out[path] = _frozen(value)
        else:
            out[path] = _number(value)
    return out


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a list (of lists or mappings): keys are compared in sets."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return _number(value)


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
    flats = [(path, {**flatten(r), THREAT_KEY: _threat_text(r)}) for path, r in recipes]
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


def _threat_text(recipe: dict[str, Any]) -> str | None:
    threat = section_threat(recipe.get("attack"))
    return None if threat is None else f"{threat.metric} {threat.bound:.12g}"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n); NaN where undefined (no value; std of one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, 0
    if not all(math.isfinite(v) for v in vals):
        return math.nan, math.nan, len(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return statistics.fmean(vals), std, len(vals)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of ``a[s] − b[s]`` over the seeds both have, its standard error and the number of pairs.

    The standard error is std(d)/√n (sample std); with one pair it is NaN (no spread to estimate).
    """
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs or not all(math.isfinite(d) for d in diffs):
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
def load_runs(paths: Sequence[Path]) -> tuple[list[RunRecord], list[str]]:
    """Every readable run, and one warning per damaged run left out (naming its file and the damage).

    A folder that is not a run or lacks a finished run's files is a :class:`UserError` (a wrong
    path); a damaged file skips only that run. Nothing left to compare is a :class:`UserError`.
    """
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(load_run(Path(path)))
        except DamagedRunError as err:
            skipped.append(f"skipped {path}: {err}")
    if not runs:
        raise UserError("no run left to compare: " + "; ".join(skipped) + ". Re-run the damaged runs (or "
                        "restore their files) and compare again.")
    return runs, skipped


def timing_warnings(runs: Sequence[RunRecord]) -> list[str]:
    """A warning when the full-data epochs of runs with the same loader took different times beyond
    their own spread: the machine's load differed, so speed-ups against other runs compare loads."""
    warnings = []
    by_loader: dict[tuple[Any, ...], list[RunRecord]] = {}
    for run in runs:
        if run.full_epoch_s:
            by_loader.setdefault(run.loader, []).append(run)
    for members in by_loader.values():
        if len(members) < 2:
            continue
        medians = {r.path: statistics.median(r.full_epoch_s) for r in members}
        spread = max((max(r.full_epoch_s) - min(r.full_epoch_s)) / medians[r.path] for r in members)
        fast, slow = min(medians, key=medians.get), max(medians, key=medians.get)
        gap = medians[slow] / medians[fast] - 1
        if gap > max(spread, TIMING_TOLERANCE):
            warnings.append(
                f"full-data epochs took {medians[fast]:.2f}s in {fast} but {medians[slow]:.2f}s in {slow} "
                f"({gap:.0%} apart; within one run they vary by at most {spread:.0%}): the runs were timed under "
                f"different machine loads, so 'speed-up (vs full runs)' mixes load with method; read "
                f"'speed-up (own full epochs)', timed within each run.")
    return warnings


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
    if "aa" in common:  # standard AutoAttack only: reduced budgets are named aa<N> (run_records)
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
    """Group, time and score the runs; the whole comparison as a JSON-ready dict (no NaN: None + note)."""
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
    full: dict[int, list[RunRecord]] = {}
    for members in groups.values():
        if members[0].selector == "full":
            full.setdefault(members[0].epochs, []).extend(members)
    rows = [_row(key, sorted(members, key=lambda r: r.seed), full.get(members[0].epochs, []), metric,
                 varying[str(dict(key).get("selector.name"))]) for key, members in groups.items()]
    rows.sort(key=lambda r: (r["selector"] != "full", r["selector"], -r["fraction"], r["label"]))
    per_run = [_per_run(run, full.get(run.epochs, []), metric) for run in runs]
    nonstandard = next((r.nonstandard[metric] for r in runs if metric in r.nonstandard), None)
    return {"attack": metric, "attack_note": nonstandard, "n_runs": len(runs), "rows": rows, "runs": per_run,
            "paired": _paired(rows), "warnings": timing_warnings(runs),
            "reference": {"speedup_within": "the run's own full-data (warm-start) epochs: E × their median / the "
                                            "run's loop time",
                          "speedup": "full-data runs of the same number of epochs (mean loop time)" if full else None}}


def _row(key: tuple, members: list[RunRecord], ref: list[RunRecord], metric: str | None,
         own: list[str]) -> dict[str, Any]:
    """One configuration (its seeds) against the full-data runs ``ref`` of the same epochs."""
    first = members[0]
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
        row[name] = _stat(values, "no clean accuracy in these runs' reports")
    within = [r.within_speedup for r in members if r.within_speedup is not None]
    notes = sorted({r.within_note for r in members if r.within_speedup is None and r.within_note})
    row["speedup_within"] = _stat(within, "; ".join(notes) or "not measured")
    capped = next((r.capped for r in members if r.capped), None)
    ref_loop = statistics.fmean(r.loop_s for r in ref) if ref else None
    ref_wall = _finite_mean([r.wall_s for r in ref])
    if capped:
        row["speedup"] = row["wall_speedup"] = _stat([], capped)
    elif ref_loop:
        row["speedup"] = _stat([ref_loop / r.loop_s for r in members if r.loop_s > 0], "no timed training loop")
        row["wall_speedup"] = _stat([ref_wall / r.wall_s for r in members if ref_wall and r.wall_s > 0],
                                    "no wall time in the reports")
    else:
        row["speedup"] = row["wall_speedup"] = _stat([], f"no full-data run of {first.epochs} epochs among the runs")
    mean = row["speedup"]["mean"]
    row["speedup_vs_ideal"] = None if mean is None else mean / row["ideal_speedup"]
    if metric:
        accs = [r.robust_acc[metric] for r in members]
        row["robust_acc"] = _stat(accs)
        row["robust_by_seed"] = {r.seed: r.robust_acc[metric] for r in members}
        ref_robust = statistics.fmean(r.robust_acc[metric] for r in ref) if ref else None
        if ref_robust is None:
            row["relative_robust_error"] = _stat([], f"no full-data run of {first.epochs} epochs to be relative to")
        elif ref_robust >= 1.0:
            row["relative_robust_error"] = _stat([], f"the full-data runs are 100% robust under {metric} (robust "
                                                     f"error 0): no error to be relative to")
        else:
            row["relative_robust_error"] = _stat([relative_robust_error(a, ref_robust) for a in accs])
    row["epoch_s"] = {p: statistics.fmean(r.epoch_s[p] for r in members if p in r.epoch_s)
                      for p in ("full", "coreset") if any(p in r.epoch_s for r in members)}
    row["all_robust_acc"] = {a: _stat([r.robust_acc[a] for r in members if a in r.robust_acc])
                             for a in sorted({a for r in members for a in r.robust_acc})}
    return row


def _per_run(run: RunRecord, ref: list[RunRecord], metric: str | None) -> dict[str, Any]:
    ref_loop = statistics.fmean(r.loop_s for r in ref) if ref else None
    ref_wall = _finite_mean([r.wall_s for r in ref])
    usable = not run.capped
    return {
        "path": run.path, "selector": run.selector, "fraction": run.fraction, "warm_start": run.warm_start,
        "seed": run.seed, "selection_attack": _selection_attack_label(run.recipe), "loop_s": run.loop_s,
        "selection_s": run.selection_s, "wall_s": run.wall_s if math.isfinite(run.wall_s) else None,
        "full_epoch_s": run.full_epoch_s, "speedup_within": run.within_speedup, "speedup_note": run.within_note,
        "speedup": ref_loop / run.loop_s if usable and ref_loop and run.loop_s else None,
        "wall_speedup": ref_wall / run.wall_s if usable and ref_wall and run.wall_s > 0 else None,
        "clean_acc": run.clean_acc, "robust_acc": run.robust_acc.get(metric) if metric else None,
        "all_robust_acc": run.robust_acc, "n_examples": run.n_examples, "nonstandard": run.nonstandard,
        "epoch_split": run.epoch_split}


def _finite_mean(values: list[float]) -> float | None:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.fmean(vals) if vals and len(vals) == len(values) else None


def _selection_attack_label(recipe: dict[str, Any]) -> str:
    attack = (recipe.get("selector") or {}).get("attack")
    if not isinstance(attack, dict):
        return "training attack"
    steps = attack.get("steps")
    return f"{attack.get('name')}" + (f"-{steps}" if steps is not None else "")


def _stat(values: Sequence[float | None], empty: str = "no value") -> dict[str, Any]:
    """``{mean, std, n, note}``: None where undefined, with the reason in ``note`` (``empty`` for no value)."""
    vals = [v for v in values if v is not None]
    mean, std, n = mean_std(vals)
    note = None
    if n == 0:
        note = empty
    elif not math.isfinite(mean):
        note = "a value is not finite"
    elif not math.isfinite(std):
        note = "one seed: no spread"
    return {"mean": mean if math.isfinite(mean) else None, "std": std if math.isfinite(std) else None, "n": n,
            "note": note}


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
                        "label": row["label"], "diff": None if math.isnan(mean) else mean,
                        "se": None if math.isnan(se) else se, "n_pairs": n})
    return out


# ----------------------------------------------------------------------------------- outputs
def _pm(stat: dict[str, Any] | None, scale: float = 1.0, fmt: str = ".1f") -> str:
    """``mean ± std (n)``, ``mean (1)`` for one seed, "–" when undefined (the reason is in the notes)."""
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("std") is None:
        return f"{stat['mean'] * scale:{fmt}} ({stat['n']})"
    return f"{stat['mean'] * scale:{fmt}} ± {stat['std'] * scale:{fmt}} ({stat['n']})"


#: Table columns of the statistics that may be undefined, with the heading the notes name them by.
NOTED = (("speedup_within", "speed-up (own full epochs)"), ("speedup", "speed-up (vs full runs)"),
         ("relative_robust_error", "rel. robust error"))


def metric_title(result: dict[str, Any]) -> str:
    """The headline metric's name, saying so when it is a reduced, non-standard AutoAttack."""
    metric = result["attack"] or "none"
    return f"{metric} (NON-STANDARD: {result['attack_note']})" if result.get("attack_note") else metric


def notes(result: dict[str, Any]) -> list[str]:
    """Why each "–" of the main table is there (one line per configuration and column)."""
    out = []
    for row in result["rows"]:
        for key, heading in NOTED:
            stat = row.get(key)
            if stat and stat.get("mean") is None and stat.get("note"):
                out.append(f"{row['label']}, {heading}: {stat['note']}")
    return out


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The console table: configuration, seeds, both speed-ups, the ideal, robust accuracy and its relative error."""
    return [(r["label"], str(r["n"]), _pm(r["speedup_within"], 1, ".2f"), _pm(r.get("speedup"), 1, ".2f"),
             f"{r['ideal_speedup']:.2f}", _pm(r.get("robust_acc"), 100), _pm(r.get("relative_robust_error"), 100))
            for r in result["rows"]]


SUMMARY_COLUMNS = ("configuration", "seeds", "speed-up (own full epochs)", "speed-up (vs full runs)", "ideal",
                   "robust acc %", "rel. robust error %")


def _split_section(runs: list[dict[str, Any]]) -> list[str]:
    """Where each run's epochs spent their wall time (the lines of runs that recorded the split)."""
    timed = [r for r in runs if r.get("epoch_split")]
    if not timed:
        return []
    lines = ["", "## Where the epoch time goes", "",
             "Mean seconds per trained epoch; epoch overhead = the share of the epochs' wall time that is neither "
             "training nor selection (validation, overfitting guard, checkpoint / coreset / metrics writes, other).",
             ""]
    lines += [f"- {r['path']}: an epoch took {split_line(r['epoch_split'])}" for r in timed]
    untimed = [r["path"] for r in runs if not r.get("epoch_split")]
    if untimed:
        lines.append(f"- not recorded (metrics.jsonl of an earlier advtrain): {', '.join(untimed)}")
    return lines


def markdown(result: dict[str, Any]) -> str:
    metric = result["attack"] or "none"
    lines = [
        "# advtrain compare", "",
        f"- {result['n_runs']} runs; robust accuracy under **{metric_title(result)}** (test split); "
        "mean ± std (n seeds)",
        "- loop = training epochs + selection passes (the paper's timing); ideal = E / (W + (E − W)·f)",
        "- speed-up (own full epochs) = E × the run's median full-data (warm-start) epoch / its loop time: both "
        "timed in the same process (the headline)",
        "- speed-up (vs full runs), also for wall time = mean time of the full-data runs of the same epochs / the "
        "run's time: times of different processes, meaningful only under the same machine load",
        "- rel. robust error = (robust error − full's) / full's robust error", "",
        "| configuration | seeds | loop s | wall s | selection share | speed-up (own full epochs) | "
        "speed-up (vs full runs) | ideal | speed-up (wall, vs full runs) | clean acc % | robust acc % | "
        "rel. robust error % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {','.join(map(str, r['seeds']))} | {_pm(r['loop_s'])} | {_pm(r['wall_s'])} | "
            f"{_pm(r['selection_share'], 100)}% | {_pm(r['speedup_within'], 1, '.2f')} | "
            f"{_pm(r.get('speedup'), 1, '.2f')} | {r['ideal_speedup']:.2f} | "
            f"{_pm(r.get('wall_speedup'), 1, '.2f')} | {_pm(r['clean_acc'], 100)} | "
            f"{_pm(r.get('robust_acc'), 100)} | {_pm(r.get('relative_robust_error'), 100)} |")
    if notes(result) or result.get("warnings") or result.get("skipped"):
        lines += ["", "Notes:", ""] + [f"- warning: {w}" for w in result.get("skipped", []) + result["warnings"]]
        lines += [f"- {n}" for n in notes(result)]
    lines += ["", "## Runs", "", "| run | selector | fraction | warm start | seed | selection attack | loop s | "
              "wall s | epoch overhead % | speed-up (own full epochs) | speed-up (loop / wall, vs full runs) | "
              "clean % | robust % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        speed = f"{r['speedup']:.2f} / {r['wall_speedup']:.2f}" if r["speedup"] and r["wall_speedup"] else "–"
        within = "–" if r["speedup_within"] is None else f"{r['speedup_within']:.2f}"
        clean = "–" if r["clean_acc"] is None else f"{100 * r['clean_acc']:.1f}"
        robust = "–" if r["robust_acc"] is None else f"{100 * r['robust_acc']:.1f}"
        wall = "–" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        split = r.get("epoch_split")
        overhead = "–" if not split else f"{100 * split['overhead_share']:.1f}"
        lines.append(f"| {r['path']} | {r['selector']} | {r['fraction']:g} | {r['warm_start']} | {r['seed']} | "
                     f"{r['selection_attack']} | {r['loop_s']:.1f} | {wall} | {overhead} | {within} | {speed} | "
                     f"{clean} | {robust} |")
    lines += _split_section(result["runs"])
    if result["paired"]:
        lines += ["", f"## Paired differences in {metric} robust accuracy (same seeds), coreset − random", "",
                  "| method | fraction | difference (pp) | standard error (pp) | pairs |", "|---|---|---|---|---|"]
        for p in result["paired"]:
            se = "–" if p["se"] is None else f"{100 * p['se']:.2f}"
            diff = "–" if p["diff"] is None else f"{100 * p['diff']:+.2f}"
            lines.append(f"| {p['label']} | {p['fraction']} | {diff} | {se} | {p['n_pairs']} |")
    return "\n".join(lines) + "\n"


def _axis(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The x quantity every row has: the within-run speed-up, else the one against full runs, else loop time."""
    for key, label in (("speedup_within", "speed-up of the training loop, against its own full epochs (×)"),
                       ("speedup", "speed-up of the training loop, against the full-data runs (×)")):
        if rows and all((r.get(key) or {}).get("mean") is not None for r in rows):
            return key, label
    return "loop_s", "training-loop time (s)"


def plot(path: Path, result: dict[str, Any]) -> None:
    """Write :func:`tradeoff_figure` as a PNG whose bounding box holds every label."""
    import matplotlib.pyplot as plt

    from advtrain.io.files import write_atomically

    fig = tradeoff_figure(result)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def tradeoff_figure(result: dict[str, Any]) -> Any:
    """Relative robust error vs speed-up, one line per selector (and selection attack), error bars = std.

    Points are markers joined in order of speed-up only to show which belong together; the margins
    keep each point's fraction label inside the axes, the y label is wrapped to the figure's height.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    yname = "relative_robust_error" if all((r.get("relative_robust_error") or {}).get("mean") is not None
                                           for r in result["rows"]) else "robust_acc"
    plotted = [r for r in result["rows"] if (r.get(yname) or {}).get("mean") is not None]
    xname, xlabel = _axis(plotted)
    plotted = [r for r in plotted if r[xname]["mean"] is not None]
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in plotted:
        name = r["selector"] if r["selection_attack"] == "training attack" else \
            f"{r['selector']} (select: {r['selection_attack']})"
        if r["selector"] != "full" and r["warm_start"]:
            name += f", warm {r['warm_start']}"
        lines.setdefault(name, []).append(r)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r[xname]["mean"])
        xs = [r[xname]["mean"] for r in rows]
        xerr = [r[xname]["std"] or 0.0 for r in rows]
        ys = [100 * r[yname]["mean"] for r in rows]
        yerr = [100 * (r[yname]["std"] or 0.0) for r in rows]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            if r["selector"] != "full":
                ax.annotate(f"{r['fraction']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(xlabel)
    ylabel = (f"relative robust error ({metric_title(result)}, %)" if yname == "relative_robust_error"
              else f"robust accuracy ({metric_title(result)}, %)")
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 45)))
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_compare(run_dirs: Sequence[Path], out: Path | None, attack: str | None = None) -> dict[str, Any]:
    """Read, compare and write ``compare.{md,json}`` and ``tradeoff.png`` into ``out``.

    Damaged runs are left out, each with a line in ``result["skipped"]`` naming its file.
    """
    from advtrain.io.files import write_atomically
    from advtrain.io.run_files import write_json

    if not run_dirs:
        raise UserError("give at least one run folder, e.g. `advtrain compare runs/full runs/gradmatch`.")
    runs, skipped = load_runs([Path(p) for p in run_dirs])
    result = compare_runs(runs, attack)
    result["skipped"] = skipped
    from advtrain.io.outputs import claim_output_dir

    out = claim_output_dir(Path(out) if out is not None else Path("compare"), command="compare",
                           files=("compare.json", "compare.md", "tradeoff.png"))
    write_json(out / "compare.json", result)
    text = markdown(result)
    write_atomically(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    plot(out / "tradeoff.png", result)
    return result
