"""Before/after table of ``throughput.py`` results: did a change make training slower?

Run the same ``throughput.py`` command at both commits, alternating (before, after, before, ...)
so that a machine's drift lands on both sides, each with its own ``--name``; then

    python bench/throughput_ab.py --before tp_before_*.json --after tp_after_*.json --name throughput_cpu_ab

Each row is the median over the repeats of each file's median img/s, with the range of those
medians beside it: a ratio inside both ranges' overlap is noise, not a change.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Column, Report, parser  # noqa: E402

KEY = ("model", "objective", "compile", "variant")


def _rows(paths: list[Path]) -> tuple[dict[tuple, list[float]], dict[tuple, float], list[dict]]:
    """Median img/s per row key over the files, the fastest pass of any file, each file's command and commit."""
    speeds: dict[tuple, list[float]] = {}
    best: dict[tuple, float] = {}
    sources = []
    for path in paths:
        record = json.loads(path.read_text())
        sources.append({"command": record.get("command"), "git": (record.get("git") or {}).get("commit")})
        for row in record.get("rows", []):
            if row.get("status", "ok") == "ok" and row.get("img_per_s"):
                key = tuple(row.get(k, "baseline" if k == "variant" else None) for k in KEY)
                speeds.setdefault(key, []).append(float(row["img_per_s"]))
                passes = row.get("all_seconds") or [row["median_seconds"]]
                best[key] = max(best.get(key, 0.0), row["images"] / min(passes))
    return speeds, best, sources


def compare(before: list[Path], after: list[Path]) -> tuple[list[dict], dict]:
    """One row per configuration present on both sides: medians, ranges and after/before."""
    old, old_best, old_sources = _rows(before)
    new, new_best, new_sources = _rows(after)
    rows = []
    for key in (k for k in old if k in new):
        a, b = statistics.median(old[key]), statistics.median(new[key])
        rows.append({**dict(zip(KEY, key, strict=True)), "before": a, "after": b, "ratio": b / a,
                     "before_range": [min(old[key]), max(old[key])], "after_range": [min(new[key]), max(new[key])],
                     "best_before": old_best[key], "best_after": new_best[key],
                     "best_ratio": new_best[key] / old_best[key], "files": [len(old[key]), len(new[key])]})
    return rows, {"before": old_sources, "after": new_sources}


def main() -> None:
    p = parser(__doc__, device=None)
    p.add_argument("--before", nargs="+", type=Path, required=True, help="throughput JSONs of the earlier commit")
    p.add_argument("--after", nargs="+", type=Path, required=True, help="throughput JSONs of the later commit")
    p.add_argument("--name", default="throughput_cpu_ab", help="result file name")
    args = p.parse_args()
    rows, sources = compare(args.before, args.after)
    if not rows:
        p.error("no configuration is in both --before and --after")
    commits = {side: sorted({s["git"] for s in v if s["git"]}) for side, v in sources.items()}
    commands = sorted({re.sub(r" --(?:name|out) \S+", "", s["command"]) for v in sources.values() for s in v if s["command"]})
    rng = "{:.0f}–{:.0f}".format
    report = Report(args.name, "Training throughput before / after", commits=commits, sources=sources)
    report.text(f"Before: {', '.join(commits['before'])}; after: {', '.join(commits['after'])}; "
                f"{len(args.before)} + {len(args.after)} runs, alternating. Each run: "
                + "; ".join(f"`{c}`" for c in commands) + " (with its own `--name`, `--out`).",
                "img/s: median over the runs of each run's median pass; range: the runs' medians. best: the "
                "fastest single pass of all runs (the least disturbed by other load on a shared machine).")
    report.table(rows, [Column("model", "model"), Column("objective", "objective"),
                        Column("compile", "compile"), Column("variant", "variant"),
                        Column("before img/s", "before", "{:.1f}"),
                        Column("range", lambda r: rng(*r["before_range"])),
                        Column("after img/s", "after", "{:.1f}"),
                        Column("range", lambda r: rng(*r["after_range"])),
                        Column("after / before", "ratio", "{:.3f}"),
                        Column("best before", "best_before", "{:.1f}"), Column("best after", "best_after", "{:.1f}"),
                        Column("best after / before", "best_ratio", "{:.3f}")])
    report.results = args.results
    print(report.write())


if __name__ == "__main__":
    main()
