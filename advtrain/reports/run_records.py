"""Finished run folders as ``advtrain compare`` reads them: one :class:`RunRecord` per folder.

Run folders are files anyone may have edited, truncated or filled with garbage, so every value
compare uses is checked here (type, finiteness, range) before any arithmetic. A damaged file
raises :class:`DamagedRunError` naming the file and what is wrong with it; compare skips such a
run with a warning (or stops when nothing is left), and never shows a traceback. Each file is read
by its own small function, so a change to one file's format stays in one place.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advtrain.errors import UserError
from advtrain.io.run_records import EPOCH_PARTS

__all__ = ["DamagedRunError", "RunRecord", "load_run"]

#: Largest file compare reads (a run's metrics, report or recipe are kilobytes to a few megabytes).
MAX_FILE_BYTES = 64 * 2**20
#: Bounds on what a recipe read back may hold (deeper or larger trees are not advtrain's).
MAX_DEPTH, MAX_NODES = 32, 100_000
#: Any duration above this (about 30 years) is damage, not a measurement.
MAX_SECONDS = 1e9
MAX_EPOCHS = 10**6


class DamagedRunError(UserError):
    """A file of a run folder is damaged: ``path`` names it, ``str(err)`` says what is wrong."""

    title = "damaged run folder"

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"'{path}': {problem}")


@dataclass
class RunRecord:
    """One finished run as the comparison sees it.

    ``full_epoch_s`` are the training seconds of its full-data epochs, in order; ``within_speedup``
    is its loop against full training of the same schedule estimated from those epochs (None with
    the reason in ``within_note``); ``capped`` says why no speed-up means anything when
    ``train.max_steps_per_epoch`` made both kinds of epoch equally long; ``nonstandard`` maps metric
    names to why they are not standard; ``loader`` is (batch size, step cap), what epoch times depend on;
    ``epoch_split`` is where its epochs' wall time went (:func:`advtrain.reports.run.epoch_split`; None
    for a run of an earlier advtrain).
    """

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
    full_epoch_s: list[float] = field(default_factory=list)
    within_speedup: float | None = None
    within_note: str | None = None
    nonstandard: dict[str, str] = field(default_factory=dict)
    loader: tuple[Any, ...] = ()
    capped: str | None = None
    epoch_split: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------- checks
def _number(value: Any, path: Path, what: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high], else damage naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DamagedRunError(path, f"{what} must be a number, got {_show(value)}")
    number = float(value) if abs(value) < 1e300 else math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise DamagedRunError(path, f"{what} must be a finite number in [{low:g}, {high:g}], got {_show(value)}")
    return number


def _integer(value: Any, path: Path, what: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DamagedRunError(path, f"{what} must be an integer in [{low}, {high}], got {_show(value)}")
    return value


def _mapping(value: Any, path: Path, what: str, *, optional: bool = False) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise DamagedRunError(path, f"{what} must be a mapping, got {_show(value)}")
    return value


def _accuracy(value: Any, path: Path, what: str) -> float | None:
    return None if value is None else _number(value, path, what, low=0.0, high=1.0)


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"an integer of {value.bit_length()} bits"  # repr() of a huge int may itself refuse
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _tree_size_ok(node: Any, path: Path) -> None:
    """Refuse trees deeper than MAX_DEPTH or with more than MAX_NODES nodes (YAML aliases count each use)."""
    stack, seen = [(node, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH or seen > MAX_NODES:
            raise DamagedRunError(path, f"nested deeper than {MAX_DEPTH} levels or larger than {MAX_NODES} values; "
                                        f"not a recipe advtrain wrote")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


# ----------------------------------------------------------------------------------- files
def _read_text(path: Path) -> str:
    """A run file's text: present, a regular file, within MAX_FILE_BYTES, UTF-8, no NUL bytes."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DamagedRunError(path, f"{size} bytes, more than any advtrain run file ({MAX_FILE_BYTES} bytes)")
        data = path.read_bytes()
    except OSError as err:
        raise DamagedRunError(path, f"cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise DamagedRunError(path, "is empty (the run was cut off while writing it)")
    if b"\0" in data:
        raise DamagedRunError(path, "holds binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedRunError(path, f"is not UTF-8 text (byte {err.start})") from None


def _json(text: str, path: Path, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedRunError(path, f"{where}is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                                    f"the file is truncated or damaged") from None
    except (ValueError, RecursionError) as err:  # digit limits, nesting beyond the parser's stack
        raise DamagedRunError(path, f"{where}cannot be parsed as JSON ({str(err)[:80]})") from None


def read_recipe(path: Path) -> dict[str, Any]:
    """``recipe.yaml``: a mapping with a ``selector`` section naming a selector."""
    text = _read_text(path)
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DamagedRunError(path, f"is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise DamagedRunError(path, f"nested deeper than {MAX_DEPTH} levels; not a recipe advtrain wrote") from None
    _tree_size_ok(recipe, path)
    recipe = _mapping(recipe, path, "the recipe")
    selector = _mapping(recipe.get("selector"), path, "the selector section")
    if not isinstance(selector.get("name"), str):
        raise DamagedRunError(path, f"selector.name must be a selector name, got {_show(selector.get('name'))}")
    return recipe


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``: one JSON mapping per line; every line complete (a torn last line is damage)."""
    lines = _read_text(path).splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = "its last line" if number == len(lines) else f"line {number}"
        record = _json(line, path, f"{where} ")
        if not isinstance(record, dict):
            raise DamagedRunError(path, f"{where} must be a JSON object (one epoch), got {_show(record)}")
        records.append(_check_epoch(record, path, where))
    return records


def _check_epoch(record: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """The keys compare reads from one metrics line, checked; the line is returned unchanged."""
    _integer(record.get("epoch"), path, f"{where}: epoch", high=MAX_EPOCHS)
    if record.get("phase") not in ("full", "coreset", "skip"):
        raise DamagedRunError(path, f"{where}: phase must be full, coreset or skip, got {_show(record.get('phase'))}")
    if record.get("train_time") is not None:
        _number(record["train_time"], path, f"{where}: train_time", low=0.0, high=MAX_SECONDS)
    if record.get("samples") is not None:
        _integer(record["samples"], path, f"{where}: samples")
    selection = _mapping(record.get("selection"), path, f"{where}: selection", optional=True)
    if selection.get("total_s") is not None:
        _number(selection["total_s"], path, f"{where}: selection.total_s", low=0.0, high=MAX_SECONDS)
    for key in ("epoch_time", "compile_warmup_s"):
        if record.get(key) is not None:
            _number(record[key], path, f"{where}: {key}", low=0.0, high=MAX_SECONDS)
    timing = _mapping(record.get("timing"), path, f"{where}: timing", optional=True)
    for part in EPOCH_PARTS:  # the split of epoch_time (lines of earlier versions have none)
        if timing.get(part) is not None:
            _number(timing[part], path, f"{where}: timing.{part}", low=0.0, high=MAX_SECONDS)
    return record


def read_report(path: Path) -> dict[str, Any]:
    """``report.json`` of a run or of ``advtrain eval``: a JSON object."""
    report = _json(_read_text(path), path)
    return _mapping(report, path, "the report")


def _test_results(block: Any, path: Path, what: str) -> tuple[float | None, dict[str, float], int, dict[str, str]]:
    """(clean accuracy, robust accuracy by metric name, examples, non-standard metrics) of an evaluation.

    A reduced AutoAttack budget that ``advtrain eval --steps N`` ran under the name ``aa`` is
    renamed ``aa<N>`` (the name grammar of that budget), so it is never taken for standard AutoAttack.
    """
    block = _mapping(block, path, what)
    clean = _accuracy(block.get("clean_acc"), path, f"{what}.clean_acc")
    n = _integer(block.get("n_examples", 0), path, f"{what}.n_examples")
    rows = {}
    for row in block.get("attacks") or []:
        if isinstance(row, dict) and isinstance(row.get("name"), str):
            rows[row["name"]] = row
    robust, nonstandard = {}, {}
    for name, acc in _mapping(block.get("robust_acc"), path, f"{what}.robust_acc", optional=True).items():
        value = _accuracy(acc, path, f"{what}.robust_acc.{name}")
        if value is None:
            continue
        row = rows.get(name, {})
        metric = name
        if row.get("standard") is False and re.fullmatch(r"aa(-l2)?(@.*)?", name) and isinstance(row.get("steps"), int):
            metric = f"aa{row['steps']}{name[2:]}"
        reduced = re.match(r"aa(\d+)", metric)
        if reduced:
            nonstandard[metric] = (f"a reduced AutoAttack budget ({reduced[1]} iterations), NOT standard AutoAttack: "
                                   f"not comparable with published AutoAttack numbers")
        robust[metric] = value
    return clean, robust, n, nonstandard


# ----------------------------------------------------------------------------------- a run
def load_run(path: Path) -> RunRecord:
    """Read one finished run folder.

    Raises:
        UserError: ``path`` is not a run folder or lacks a file of a finished run.
        DamagedRunError: one of its files is damaged (the error names it).
    """
    from advtrain.reports.run import epoch_seconds, epoch_split, loop_seconds, speedup_estimate

    if not path.is_dir():
        raise UserError(f"'{path}' is not a run folder; give folders that `advtrain run` wrote "
                        f"(each holds recipe.yaml, metrics.jsonl and report.json).")
    for name in ("recipe.yaml", "metrics.jsonl", "report.json"):
        if not (path / name).is_file():
            raise UserError(f"'{path}' has no {name}: compare needs finished runs (recipe.yaml, "
                            f"metrics.jsonl, report.json); finish it with `advtrain run ... --resume`.")
    recipe = read_recipe(path / "recipe.yaml")
    metrics = read_metrics(path / "metrics.jsonl")
    report = read_report(path / "report.json")
    where = path / "recipe.yaml"
    schedule = _mapping(recipe.get("schedule"), where, "the schedule section", optional=True)
    selector = recipe["selector"]
    name = selector["name"]
    fraction = 1.0 if name == "full" else _number(selector.get("fraction", 1.0), where, "selector.fraction",
                                                   low=0.0, high=1.0)
    epochs = _integer(schedule.get("epochs", len(metrics)), where, "schedule.epochs", low=1, high=MAX_EPOCHS)
    warm = _integer(schedule.get("warm_start_epochs", 0), where, "schedule.warm_start_epochs", high=MAX_EPOCHS)
    skip = _integer(schedule.get("skip_epochs", 0), where, "schedule.skip_epochs", high=MAX_EPOCHS)
    seed = _integer(recipe.get("seed", 0), where, "seed")
    cap, batch = _loader(recipe, where)
    loop_s, train_s, selection_s = loop_seconds(metrics)
    clean, robust, n_test, nonstandard = None, {}, 0, {}
    if report.get("test") is not None:
        clean, robust, n_test, nonstandard = _test_results(report["test"], path / "report.json", "test")
    n_examples = {k: n_test for k in ["clean", *robust]}
    for eval_dir in sorted(p for p in [*path.glob("eval*"), *path.glob("eval/*")] if (p / "report.json").is_file()):
        ev_path = eval_dir / "report.json"
        ev = read_report(ev_path)
        if ev.get("split", "test") != "test":
            continue
        ev_clean, ev_robust, n, ev_nonstandard = _test_results(ev, ev_path, "the evaluation")
        if ev_clean is not None and n >= n_examples.get("clean", 0):
            clean, n_examples["clean"] = ev_clean, n
        for attack, acc in ev_robust.items():
            if n >= n_examples.get(attack, 0):
                robust[attack], n_examples[attack] = acc, n
                nonstandard.pop(attack, None)
                if attack in ev_nonstandard:
                    nonstandard[attack] = ev_nonstandard[attack]
    wall = report.get("wall_seconds")
    wall_s = math.nan if wall is None else _number(wall, path / "report.json", "wall_seconds", low=0.0,
                                                    high=MAX_SECONDS)
    estimate = speedup_estimate(metrics, epochs, max_steps=cap, batch_size=batch)
    within, note = _within(name, estimate, warm)
    return RunRecord(
        path=str(path), recipe=recipe, seed=seed, selector=name, fraction=fraction, epochs=epochs, warm_start=warm,
        skip_epochs=skip, loop_s=loop_s, train_s=train_s, selection_s=selection_s, wall_s=wall_s, clean_acc=clean,
        robust_acc=robust, n_examples=n_examples, epoch_s=epoch_seconds(metrics),
        full_epoch_s=[float(m["train_time"]) for m in metrics if m["phase"] == "full" and m.get("train_time")],
        within_speedup=within, within_note=note, nonstandard=nonstandard, loader=(batch, cap),
        capped=None if estimate is None else estimate.get("note"), epoch_split=epoch_split(metrics))


def _loader(recipe: dict[str, Any], where: Path) -> tuple[int | None, int | None]:
    """(``train.max_steps_per_epoch``, ``data.batch_size``) when the recipe sets them."""
    train = _mapping(recipe.get("train"), where, "the train section", optional=True)
    data = _mapping(recipe.get("data"), where, "the data section", optional=True)
    cap = train.get("max_steps_per_epoch")
    batch = data.get("batch_size")
    return (None if cap is None else _integer(cap, where, "train.max_steps_per_epoch", low=1),
            None if batch is None else _integer(batch, where, "data.batch_size", low=1))


def _within(selector: str, estimate: dict[str, Any] | None, warm: int) -> tuple[float | None, str | None]:
    """The run's within-run speed-up, or None and why there is none."""
    if selector == "full":
        return 1.0, None
    if estimate is None:
        return None, ("no full-data epoch to time it against (schedule.warm_start_epochs=0)" if warm == 0
                      else "no timed coreset epoch")
    if estimate.get("speedup") is None:
        return None, estimate.get("note")
    return float(estimate["speedup"]), None

