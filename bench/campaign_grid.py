"""Campaign grids: a base recipe, overrides per configuration, seeds and evaluations, as data.

A grid is a small YAML file in ``bench/grids/`` (or any path): which recipe, which overrides every
run shares, one list of overrides per configuration, the seeds, the ``advtrain eval`` calls made on
each last checkpoint, a cost prior for planning slices, and the paper's figures to print beside
ours. :func:`load_grid` checks all of it and reports every problem at once (a :class:`GridError`,
which the command line prints as one paragraph with exit code 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ROOT / "bench" / "grids"
#: A configuration or evaluation name: becomes part of a file name.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DATA_SOURCES = ("recipe", "cifar10_jpeg")


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file and every bad key."""


@dataclass(frozen=True)
class EvalSpec:
    """One ``advtrain eval`` of the last checkpoint."""

    name: str
    attacks: tuple[str, ...]
    n_examples: int
    eps: str | None = None
    alpha: str | None = None
    batch_size: int | None = None

    def argv(self, checkpoint: str, out: str, device: str) -> list[str]:
        args = ["eval", checkpoint, "--attack", ",".join(self.attacks), "--n-examples", str(self.n_examples),
                "--out", out, "--device", device]
        if self.eps is not None:
            args += ["--eps", self.eps]
        if self.alpha is not None:
            args += ["--alpha", self.alpha]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        return args


@dataclass(frozen=True)
class Prior:
    """Conservative seconds for planning before any run of the grid was measured."""

    start_s: float
    full_epoch_s: float
    selection_s: dict[str, float]
    eval_s: dict[str, float]
    safety: float = 1.15


@dataclass(frozen=True)
class RunSpec:
    """One (configuration, seed) of a grid."""

    config: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def tag(self) -> str:
        return f"{self.config}_seed{self.seed}"


@dataclass(frozen=True)
class Grid:
    """A whole campaign grid (see the module docstring)."""

    name: str
    recipe: str
    data: dict[str, Any]
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    configs: dict[str, tuple[str, ...]]
    evals: tuple[EvalSpec, ...]
    report_attacks: tuple[str, ...]
    headline: str
    prior: Prior
    paper: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def runs(self, seeds: list[int] | None = None, configs: list[str] | None = None) -> list[RunSpec]:
        """Seed-major order (a seed's configurations finish together, so paired differences grow)."""
        out = []
        for seed in seeds if seeds is not None else self.seeds:
            for name, extra in self.configs.items():
                if configs is None or name in configs:
                    out.append(RunSpec(name, seed, (*self.overrides, *extra)))
        return out

    def schedule(self, config: str) -> dict[str, Any]:
        """Selector, fraction and schedule of a configuration, read from its overrides (over the recipe's)."""
        values = dict(_recipe_values(self.recipe))
        for item in (*self.overrides, *self.configs[config]):
            key, _, value = item.partition("=")
            values[key] = value
        selector = values.get("selector", values.get("selector.name", "full"))
        return {"selector": selector,
                "fraction": 1.0 if selector == "full" else float(values.get("selector.fraction", 1.0)),
                "epochs": int(values.get("schedule.epochs", 1)),
                "warm_start": int(values.get("schedule.warm_start_epochs", 0)),
                "select_every": int(values.get("schedule.select_every", 20)),
                "skip_epochs": int(values.get("schedule.skip_epochs", 0))}


def _recipe_values(recipe: str) -> dict[str, Any]:
    """The recipe's selector and schedule keys in override form (read once per call; recipes are small)."""
    try:
        tree = yaml.safe_load((ROOT / recipe).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, Any] = {}
    selector = tree.get("selector") or {}
    if isinstance(selector, dict):
        out["selector"] = selector.get("name", "full")
        if "fraction" in selector:
            out["selector.fraction"] = selector["fraction"]
    for key, value in (tree.get("schedule") or {}).items():
        out[f"schedule.{key}"] = value
    return out


def selections(schedule: dict[str, Any]) -> int:
    """Selection passes of a schedule: before each coreset epoch at W, W+T, W+2T, ... (none for full)."""
    if schedule["selector"] == "full":
        return 0
    first = schedule["warm_start"] + schedule["skip_epochs"]
    return len(range(first, schedule["epochs"], max(1, schedule["select_every"])))


def grid_path(name_or_path: str) -> Path:
    """``cifar10_linf`` → ``bench/grids/cifar10_linf.yaml``; an existing path is used as given."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return GRIDS / f"{name_or_path}.yaml"


def load_grid(name_or_path: str) -> Grid:
    """Read and check a grid; every problem is reported at once."""
    path = grid_path(name_or_path)
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:  # a grid outside the checkout is named by its file name only (no machine path)
        shown = path.name
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in GRIDS.glob("*.yaml")))
        raise GridError(f"grid '{name_or_path}' not found: give a grid name ({known}) or a grid .yaml file.")
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise GridError(f"grid {shown} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise GridError(f"grid {shown}: expected a mapping of name, recipe, overrides, seeds, configs, evals.")
    errors: list[str] = []

    def need(key: str, kind: type, default: Any = None) -> Any:
        value = tree.get(key, default)
        if not isinstance(value, kind):
            errors.append(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
            return kind() if default is None else default
        return value

    known_keys = {"name", "recipe", "data", "overrides", "seeds", "configs", "evals", "report", "prior", "paper"}
    errors += [f"{k}: not a grid key (keys: {', '.join(sorted(known_keys))})" for k in tree if k not in known_keys]
    name = need("name", str)
    if name and not NAME.fullmatch(name):
        errors.append(f"name: '{name}' must be letters, digits, '.', '_' or '-'")
    recipe = need("recipe", str)
    data = need("data", dict, {"source": "recipe"})
    if data.get("source", "recipe") not in DATA_SOURCES:
        errors.append(f"data.source: '{data.get('source')}' is not one of {', '.join(DATA_SOURCES)}")
    overrides = [str(o) for o in need("overrides", list, [])]
    seeds = need("seeds", list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        errors.append(f"seeds: expected a list of non-negative integers, got {seeds!r}")
    configs_tree = need("configs", dict)
    configs: dict[str, tuple[str, ...]] = {}
    for cname, extra in configs_tree.items():
        if not NAME.fullmatch(str(cname)):
            errors.append(f"configs.{cname}: name must be letters, digits, '.', '_' or '-'")
        if not isinstance(extra, list):
            errors.append(f"configs.{cname}: expected a list of key=value overrides")
            continue
        configs[str(cname)] = tuple(str(o) for o in extra)
    for where, items in [("overrides", overrides), *((f"configs.{c}", list(v)) for c, v in configs.items())]:
        for item in items:
            if "=" not in item:
                errors.append(f"{where}: '{item}' is not key=value")
            elif item.split("=", 1)[0] in ("name", "seed", "output.dir", "device"):
                errors.append(f"{where}: '{item}': the runner sets name, seed, output.dir and device itself")
    evals = []
    for i, spec in enumerate(need("evals", list)):
        try:
            evals.append(EvalSpec(name=str(spec["name"]), attacks=tuple(str(a) for a in spec["attacks"]),
                                  n_examples=int(spec["n_examples"]),
                                  eps=None if spec.get("eps") is None else str(spec["eps"]),
                                  alpha=None if spec.get("alpha") is None else str(spec["alpha"]),
                                  batch_size=None if spec.get("batch_size") is None else int(spec["batch_size"])))
        except (KeyError, TypeError, ValueError) as err:
            errors.append(f"evals[{i}]: needs name, attacks (a list) and n_examples; optional eps, alpha, "
                          f"batch_size ({type(err).__name__}: {err})")
            continue
        if not NAME.fullmatch(evals[-1].name):
            errors.append(f"evals[{i}].name: '{evals[-1].name}' must be letters, digits, '.', '_' or '-'")
    if len({e.name for e in evals}) != len(evals):
        errors.append("evals: names must be distinct")
    report = need("report", dict, {})
    measured = [a for e in evals for a in e.attacks]
    report_attacks = tuple(str(a) for a in report.get("attacks", measured))
    errors += [f"report.attacks: '{a}' is measured by no evaluation (evals measure {', '.join(measured)})"
               for a in report_attacks if a not in measured]
    headline = str(report.get("headline", report_attacks[-1] if report_attacks else "clean"))
    if headline not in measured:
        errors.append(f"report.headline: '{headline}' is measured by no evaluation")
    prior_tree = need("prior", dict, {})
    try:
        prior = Prior(start_s=float(prior_tree["start_s"]), full_epoch_s=float(prior_tree["full_epoch_s"]),
                      selection_s={str(k): float(v) for k, v in (prior_tree.get("selection_s") or {}).items()},
                      eval_s={str(k): float(v) for k, v in (prior_tree.get("eval_s") or {}).items()},
                      safety=float(prior_tree.get("safety", 1.15)))
    except (KeyError, TypeError, ValueError) as err:
        errors.append(f"prior: needs start_s and full_epoch_s (seconds), optional selection_s, eval_s, safety "
                      f"({type(err).__name__}: {err})")
        prior = Prior(60.0, 10.0, {}, {})
    if errors:
        raise GridError(f"grid {shown} has {len(errors)} problem(s): " + "; ".join(errors) + ".")
    return Grid(name=name, recipe=recipe, data=data, overrides=tuple(overrides), seeds=tuple(seeds),
                configs=configs, evals=tuple(evals), report_attacks=report_attacks, headline=headline,
                prior=prior, paper=tree.get("paper") or {}, source=shown)
