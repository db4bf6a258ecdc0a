"""The campaign's statistics over per-run records (pure functions; no I/O, no torch).

A record is one finished run's JSON (see ``campaign.py``): ``config``, ``seed``, ``schedule``,
``epochs`` (the run's ``metrics.jsonl`` lines, trimmed), ``accuracy`` by attack name. The
arithmetic of means, paired differences, the ideal bound and the relative robust error is the one
``advtrain compare`` uses (:mod:`advtrain.reports.compare`), imported rather than repeated.

Speed-ups are given two ways. *Measured*: the mean training loop (training epochs + selection
passes, the paper's timing) of the full-data runs over the run's own loop, compile warm-up and all.
*Steady state*: the same from median epoch times, ``E·full / (W·full + (E−W)·coreset + selections)``,
which leaves out the one-off compile warm-up that a 12-epoch schedule cannot amortise as the
paper's 120 epochs would.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from advtrain.reports.compare import ideal_speedup, mean_std, paired_difference, relative_robust_error
from advtrain.reports.run import epoch_seconds, loop_seconds


@dataclass
class Stat:
    """Mean, sample standard deviation and count (std NaN below two values: no spread to estimate)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        mean, std, n = mean_std([v for v in values if v is not None and not math.isnan(v)])
        return cls(mean, std if n > 1 else math.nan, n)


@dataclass
class Paired:
    """``a − b`` paired by seed: mean, standard error, pairs, and the mean in standard errors."""

    a: str
    b: str
    attack: str
    diff: float
    se: float
    n: int

    @property
    def z(self) -> float:
        return self.diff / self.se if self.se and not math.isnan(self.se) else math.nan


@dataclass
class ConfigSummary:
    """One configuration over its seeds."""

    config: str
    selector: str
    fraction: float
    seeds: list[int]
    accuracy: dict[str, Stat]
    by_seed: dict[str, dict[int, float]]
    loop_s: Stat
    wall_s: Stat
    selection_share: Stat
    selection_split: dict[str, float]
    ideal_speedup: float
    speedup: Stat | None = None
    steady_speedup: float | None = None
    relative_robust_error: Stat | None = None
    epoch_s: dict[str, float] = field(default_factory=dict)


def run_loop(record: dict[str, Any]) -> tuple[float, float, float]:
    """(loop, training, selection) seconds of one record's epochs."""
    return loop_seconds(record["epochs"])


def selection_passes(record: dict[str, Any]) -> list[dict[str, float]]:
    return [e["selection"] for e in record["epochs"] if e.get("selection")]


def steady_speedup(record: dict[str, Any], full_epoch_s: float) -> float | None:
    """E·full / (W·full + coreset epochs × median coreset epoch + Σ selection), from median epochs."""
    sched = record["schedule"]
    if not full_epoch_s or sched["selector"] == "full":
        return 1.0 if sched["selector"] == "full" else None
    own = epoch_seconds(record["epochs"])
    if "coreset" not in own:
        return None
    coreset_epochs = sum(1 for e in record["epochs"] if e.get("phase") == "coreset")
    full_epochs = sum(1 for e in record["epochs"] if e.get("phase") == "full")
    selection = sum(float(s.get("total_s", 0.0)) for s in selection_passes(record))
    trained = full_epochs * full_epoch_s + coreset_epochs * own["coreset"] + selection
    return sched["epochs"] * full_epoch_s / trained if trained > 0 else None


def summarise(records: Sequence[dict[str, Any]], attacks: Sequence[str], headline: str) -> list[ConfigSummary]:
    """Per configuration (in the order first seen), its statistics against the full-data runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec["config"], []).append(rec)
    full = [r for r in records if r["schedule"]["selector"] == "full"]
    full_loop = statistics.fmean(run_loop(r)[0] for r in full) if full else None
    full_epochs = [epoch_seconds(r["epochs"]).get("full") for r in full]
    full_epoch_s = statistics.median([t for t in full_epochs if t]) if any(full_epochs) else None
    full_headline = Stat.of([r["accuracy"].get(headline) for r in full]).mean if full else math.nan
    out = []
    for config, members in groups.items():
        members = sorted(members, key=lambda r: r["seed"])
        sched = members[0]["schedule"]
        loops = [run_loop(r) for r in members]
        passes = [p for r in members for p in selection_passes(r)]
        split = {k: statistics.fmean(float(p.get(k, 0.0)) for p in passes) for k in
                 ("attack_s", "features_s", "solver_s", "total_s")} if passes else {}
        summary = ConfigSummary(
            config=config, selector=sched["selector"], fraction=float(sched["fraction"]),
            seeds=[r["seed"] for r in members],
            accuracy={a: Stat.of([r["accuracy"].get(a) for r in members]) for a in attacks},
            by_seed={a: {r["seed"]: r["accuracy"][a] for r in members if r["accuracy"].get(a) is not None}
                     for a in attacks},
            loop_s=Stat.of([lp[0] for lp in loops]), wall_s=Stat.of([r["timing"]["run_wall_s"] for r in members]),
            selection_share=Stat.of([lp[2] / lp[0] if lp[0] else 0.0 for lp in loops]), selection_split=split,
            ideal_speedup=ideal_speedup(sched["epochs"], sched["warm_start"], float(sched["fraction"]),
                                        sched.get("skip_epochs", 0)),
            epoch_s={p: statistics.median(v) for p in ("full", "coreset")
                     if (v := [t for r in members if (t := epoch_seconds(r["epochs"]).get(p))])})
        if full_loop:
            summary.speedup = Stat.of([full_loop / lp[0] for lp in loops if lp[0] > 0])
        if full_epoch_s:
            steady = [s for r in members if (s := steady_speedup(r, full_epoch_s)) is not None]
            summary.steady_speedup = statistics.fmean(steady) if steady else None
        if full and not math.isnan(full_headline):
            summary.relative_robust_error = Stat.of(
                [relative_robust_error(r["accuracy"][headline], full_headline) for r in members
                 if r["accuracy"].get(headline) is not None])
        out.append(summary)
    return out


def paired(summaries: Sequence[ConfigSummary], attacks: Sequence[str]) -> list[Paired]:
    """Each coreset configuration − random at its fraction, and − full; random − full too."""
    fulls = [s for s in summaries if s.selector == "full"]
    out = []
    for s in summaries:
        if s.selector == "full":
            continue
        versus = []
        if s.selector != "random":
            versus += [r for r in summaries if r.selector == "random" and math.isclose(r.fraction, s.fraction)]
        versus += fulls
        for other in versus:
            for attack in attacks:
                diff, se, n = paired_difference(s.by_seed.get(attack, {}), other.by_seed.get(attack, {}))
                if n:
                    out.append(Paired(s.config, other.config, attack, diff, se, n))
    return out
