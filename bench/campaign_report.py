"""The aggregate of a campaign grid: ``campaign_<grid>.md`` and ``campaign_<grid>.png``.

Per configuration the mean ± sample std over seeds; paired differences (coreset − random at the
same fraction, coreset − full, random − full) with standard errors std(d)/√n, paired by seed; the
measured and steady-state loop speed-ups against the ideal bound; the selection share of the loop;
and the paper's figures beside ours. Works on any subset of seeds: with one seed a spread cannot be
estimated and is printed as "–".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from campaign_grid import Grid
from campaign_stats import ConfigSummary, Paired, Stat, paired, summarise

NO_SPREAD = "–"


def pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def pm(stat: Stat | None, scale: float = 100.0, fmt: str = ".2f") -> str:
    """``mean ± std`` (std "–" with one seed); "–" when nothing was measured."""
    if stat is None or not stat.n:
        return "–"
    spread = NO_SPREAD if math.isnan(stat.std) else f"{stat.std * scale:{fmt}}"
    return f"{stat.mean * scale:{fmt}} ± {spread}"


def _times(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}×"


def _paper_row(grid: Grid, config: str) -> dict[str, Any]:
    return (grid.paper.get("rows") or {}).get(config) or {}


def _paper_speedup(grid: Grid, config: str) -> float | None:
    full = _paper_row(grid, "full").get("minutes")
    own = _paper_row(grid, config).get("minutes")
    return full / own if full and own else None


def ordered(grid: Grid, summaries: list[ConfigSummary]) -> list[ConfigSummary]:
    """In the grid's order of configurations (any not in the grid last)."""
    order = list(grid.configs)
    return sorted(summaries, key=lambda s: order.index(s.config) if s.config in order else len(order))


def markdown(grid: Grid, records: Sequence[dict[str, Any]], command: str,
             summaries: list[ConfigSummary] | None = None, pairs: list[Paired] | None = None) -> str:
    attacks = list(grid.report_attacks)
    summaries = summaries if summaries is not None else ordered(grid, summarise(records, attacks, grid.headline))
    pairs = pairs if pairs is not None else paired(summaries, attacks)
    devices = sorted({r["device"] for r in records})
    commits = sorted({f"{(r['git'].get('commit') or 'unknown')[:10]}{' (dirty)' if r['git'].get('dirty') else ''}"
                      for r in records})
    n_examples = {a: sorted({r["n_examples"].get(a) for r in records if a in r["n_examples"]}) for a in attacks}
    one_seed = any(s.accuracy[grid.headline].n == 1 for s in summaries)
    lines = [f"# Campaign `{grid.name}`", "",
             f"Command: `{command}` (the runs: `python bench/campaign.py run {grid.name}`, grid "
             f"`{grid.source}`).", "",
             f"- {len(records)} finished runs; data: {records[0]['data']}"
             + (" (**JPEG copy**: every accuracy below is measured on it, close to but not equal to real CIFAR-10)"
                if grid.data.get("source") == "cifar10_jpeg" else ""),
             f"- recipe `{grid.recipe}` with `{' '.join(grid.overrides)}`; configurations add their own overrides "
             f"(per-run JSONs in `bench/results/campaign/{grid.name}/`)",
             "- evaluation of the last checkpoint: "
             + "; ".join(f"{'/'.join(e.attacks)} on the first {e.n_examples} test images"
                         + (f" (ε {e.eps}" + (f", step {e.alpha}" if e.alpha else "") + ")" if e.eps else "")
                         for e in grid.evals) + "; fp32",
             f"- device(s): {', '.join(devices)}; commit(s): {', '.join(commits)}",
             "- mean ± sample standard deviation over seeds; paired differences: mean of the per-seed differences "
             "± its standard error std(d)/√n"
             + ("; **± –**: one seed, no spread to estimate" if one_seed else ""), ""]
    lines += ["## Accuracy (%)", "",
              "| configuration | seeds | " + " | ".join(f"{a} (n={','.join(map(str, n_examples[a]))})"
                                                     for a in attacks)
              + f" | rel. robust error ({grid.headline}) | paper clean | paper robust |",
              "|---|---|" + "---|" * len(attacks) + "---|---|---|"]
    for s in summaries:
        paper = _paper_row(grid, s.config)
        lines.append(f"| {s.config} | {','.join(map(str, s.seeds))} | "
                     + " | ".join(pm(s.accuracy[a]) for a in attacks)
                     + f" | {pm(s.relative_robust_error, fmt='.1f')} | {paper.get('clean', '–')} | "
                       f"{paper.get('robust', '–')} |")
    lines += ["", "## Paired differences (percentage points, same seeds)", "",
              "| comparison | attack | difference ± se | pairs | difference / se |", "|---|---|---|---|---|"]
    for p in pairs:
        se = NO_SPREAD if math.isnan(p.se) else f"{100 * p.se:.2f}"
        z = "–" if math.isnan(p.z) else f"{p.z:+.1f}"
        lines.append(f"| {p.a} − {p.b} | {p.attack} | {100 * p.diff:+.2f} ± {se} | {p.n} | {z} |")
    if not pairs:
        lines.append("| – | – | – | – | – |")
    lines += ["", "## Speed", "",
              "Loop = training epochs + selection passes (the paper's timing; validation, checkpoints and "
              "evaluation left out). Measured speed-up = mean loop of the full runs / the run's loop, compile "
              "warm-up included; steady state = the same from median epoch times (no warm-up); ideal = "
              "E / (W + (E − W)·f) with free selection.", "",
              "| configuration | loop s | advtrain run wall s | median full / coreset epoch s | speed-up measured | "
              "steady state | ideal | measured / ideal | selection share | selection attack / features / solver s "
              "| paper T min | paper speed-up |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        split = s.selection_split
        sel = (f"{split['attack_s']:.1f} / {split['features_s']:.2f} / {split['solver_s']:.2f}"
               if split else "–")
        epochs = " / ".join(f"{s.epoch_s[p]:.1f}" if p in s.epoch_s else "–" for p in ("full", "coreset"))
        ratio = s.speedup.mean / s.ideal_speedup if s.speedup and s.speedup.n else None
        lines.append(f"| {s.config} | {pm(s.loop_s, 1, '.1f')} | {pm(s.wall_s, 1, '.1f')} | {epochs} | "
                     f"{pm(s.speedup, 1, '.2f')} | {_times(s.steady_speedup)} | {s.ideal_speedup:.2f}× | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} | {pm(s.selection_share, 100, '.1f')}% | {sel} | "
                     f"{_paper_row(grid, s.config).get('minutes', '–')} | {_times(_paper_speedup(grid, s.config))} |")
    if grid.paper.get("rows"):
        lines += ["", f"Paper figures: {grid.paper['source']}; its schedule: {grid.paper.get('schedule', '–')}."
                  + (f" Note: {grid.paper['note']}." if grid.paper.get("note") else "")
                  + " Our schedule is shortened (see the grid file), so compare differences and speed-ups, "
                    "not absolute accuracies."]
    lines += ["", "## Runs", "", "| run | commit | device | loop s | " + " | ".join(f"{a} %" for a in attacks) + " |",
              "|---|---|---|---|" + "---|" * len(attacks)]
    for r in sorted(records, key=lambda r: (r["seed"], list(grid.configs).index(r["config"])
                                            if r["config"] in grid.configs else 99)):
        loop = sum(float(e.get("train_time") or 0) + float((e.get("selection") or {}).get("total_s") or 0)
                   for e in r["epochs"])
        commit = (r["git"].get("commit") or "unknown")[:10] + ("+" if r["git"].get("dirty") else "")
        lines.append(f"| {r['config']}_seed{r['seed']} | {commit} | {r['device']} | {loop:.1f} | "
                     + " | ".join(pct(r["accuracy"].get(a)) for a in attacks) + " |")
    lines += ["", "Read a paired difference as evidence only when it is larger than about two standard errors; "
              "with three seeds the standard error itself is rough."]
    return "\n".join(lines) + "\n"


def plot(path: Path, grid: Grid, summaries: list[ConfigSummary]) -> None:
    """Robust accuracy of each attack against the measured loop speed-up, one line per selector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robust = [a for a in grid.report_attacks if a != "clean"] or list(grid.report_attacks)
    fig, axes = plt.subplots(1, len(robust), figsize=(5 * len(robust), 3.8), squeeze=False)
    for ax, attack in zip(axes[0], robust, strict=True):
        by_selector: dict[str, list[ConfigSummary]] = {}
        for s in summaries:
            by_selector.setdefault(s.selector, []).append(s)
        for selector, rows in sorted(by_selector.items()):
            rows = [r for r in rows if r.accuracy[attack].n]
            if not rows:
                continue
            rows.sort(key=lambda r: r.speedup.mean if r.speedup else r.fraction)
            xs = [r.speedup.mean if r.speedup else 1 / r.fraction for r in rows]
            xerr = [0 if not r.speedup or math.isnan(r.speedup.std) else r.speedup.std for r in rows]
            ys = [100 * r.accuracy[attack].mean for r in rows]
            yerr = [0 if math.isnan(r.accuracy[attack].std) else 100 * r.accuracy[attack].std for r in rows]
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=selector)
            for r, x, y in zip(rows, xs, ys, strict=True):
                if r.selector != "full":
                    ax.annotate(f"{r.fraction:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        paper = [(_paper_speedup(grid, c) or 1.0, row["robust"]) for c, row in (grid.paper.get("rows") or {}).items()
                 if attack == grid.headline and row.get("robust") is not None]
        if paper:  # the paper's own (120-epoch, real CIFAR-10) points, for the shape rather than the level
            ax.scatter([p[0] for p in paper], [p[1] for p in paper], marker="x", color="grey", label="paper Table 1")
        ax.set_xlabel("training-loop speed-up, measured (×)")
        ax.set_ylabel(f"{attack} accuracy (%)")
        ax.set_title(f"{grid.name}: {attack} (mean ± std over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_aggregate(grid: Grid, records: Sequence[dict[str, Any]], out: Path, command: str) -> tuple[Path, Path]:
    attacks = list(grid.report_attacks)
    summaries = ordered(grid, summarise(records, attacks, grid.headline))
    text = markdown(grid, records, command, summaries, paired(summaries, attacks))
    md, png = out / f"campaign_{grid.name}.md", out / f"campaign_{grid.name}.png"
    out.mkdir(parents=True, exist_ok=True)
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(md)
    plot(png, grid, summaries)
    return md, png
