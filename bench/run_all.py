"""``make bench``: every benchmark at CPU-small settings; ``--full`` adds the long ones; ``--stale`` lists old results.

``BENCHES`` is the one table of the benchmarks: the script, the result files it writes, the code it
measures, and its quick and full command lines (``None``: not run by this driver, e.g. GPU-only or
reading another benchmark's runs; its command is in its result). ``--stale`` (``make bench-stale``)
reads the commit each result recorded and lists it when a file it measures changed after that
commit, when the commit is unknown, or when the result was made from a dirty tree.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: What a training benchmark measures: the whole pipeline a run goes through.
PIPELINE = ("advtrain", "recipes")
#: What the training-step benchmarks measure: the step, its components, not the reports or the CLI.
STEP = ("advtrain/train", "advtrain/attacks", "advtrain/objectives", "advtrain/models", "advtrain/data",
        "advtrain/optim", "advtrain/build.py", "advtrain/runtime")


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its results (globs under bench/results), what it measures, its commands."""

    script: str
    results: tuple[str, ...]
    measures: tuple[str, ...]
    quick: tuple[str, ...] | None = None
    full: tuple[tuple[str, ...], ...] = ()

    def sources(self) -> list[str]:
        """The files whose change makes a result stale: the code measured and the script itself (not the
        harness in bench/_common.py, which records and formats but measures nothing)."""
        own = [f"bench/{self.script}"] if self.script.endswith((".py", ".sh")) else []
        return [*self.measures, *own]


BENCHES = [
    # Before/after tables of throughput.py runs made by hand at two commits (see bench/README.md).
    Bench("throughput_ab.py", ("throughput_*_ab",), (*STEP, "bench/throughput.py")),
    Bench("throughput.py", ("throughput_*",), (*STEP, "bench/profile_summary.py"), quick=()),
    Bench("peer_baseline.py", ("peer_baseline_*",), (*STEP, "bench/throughput.py"), quick=()),
    Bench("solvers.py", ("solvers_*",), ("advtrain/selection",), quick=()),
    Bench("coreset_compare.py", ("coreset_compare_*",), PIPELINE,
          quick=("--dataset", "digits", "--epochs", "10", "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5",
                 "--tag", "quick"),
          full=(("--dataset", "digits", "--epochs", "30"),
                ("--dataset", "digits", "--epochs", "30", "--warm", "0.25", "--skip", "0.25", "--every", "0.17",
                 "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5", "--tag", "reference_skip"),
                ("--dataset", "cifar10", "--n-train", "4000", "--n-test", "500", "--n-eval", "500", "--epochs", "10",
                 "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5"))),
    Bench("objectives_digits.py", ("objectives_digits",), PIPELINE, full=((),)),
    Bench("perceptual_compare.py", ("perceptual_compare_*",), PIPELINE, full=(("--dataset", "digits"),)),
    # GPU-sized by default; bench/gpu_check.sh runs it on CUDA. Its CPU smoke size:
    Bench("acs_short.py", ("acs_short_*",), PIPELINE,
          full=(("--device", "cpu", "--n-train", "512", "--n-test", "128", "--model", "resnet_tiny_cifar",
                 "--name", "acs_short_cpu"),)),
    Bench("tradeoff.py", ("tradeoff_digits", "tradeoff_cifar10", "tradeoff_digits_quiet", "tradeoff_*/compare"),
          PIPELINE, full=(("--grid", "digits", "--jobs", "2"),)),
    # About 8 minutes: a short default run alone and beside busy loops, before/after the thread policy.
    Bench("threads.py", ("threads_*",), PIPELINE),
    # About 10 minutes: two GradMatch runs, one beside busy loops; compare's within-run speed-up.
    Bench("compare_load.py", ("compare_load",), (*PIPELINE, "advtrain/reports/compare.py",
                                                 "advtrain/reports/run_records.py")),
    # Reads a tradeoff grid's finished runs (local/tradeoff/...): run it by hand after tradeoff.py.
    Bench("tradeoff_project.py", ("tradeoff_*_projection",), ("bench/tradeoff.py",)),
    # The GPU check (bench/gpu_check.sh, one H100/H200): its summary and logs.
    Bench("gpu_check.sh", ("gpu_check_*",), (*PIPELINE, "bench/gpu_summary.py", "bench/throughput.py",
                                             "bench/peer_baseline.py", "bench/acs_short.py")),
    # One GPU session's device call: smoke, the quick check (its targets table), then a campaign slice.
    Bench("device_session.sh", ("gpu_quick_*",), (*STEP, "bench/gpu_quick.py", "bench/throughput.py",
                                                  "bench/profile_summary.py", "bench/peer_baseline.py",
                                                  "bench/solvers.py", "advtrain/selection")),
    Bench("campaign.py", ("campaign*",), (*PIPELINE, "bench/tradeoff.py", "bench/campaign_grid.py",
                                          "bench/campaign_report.py", "bench/campaign_stats.py",
                                          "bench/campaign_slice.sh")),
    # A hand-run measurement, not a script: see the note in bench/README.md.
    Bench("(by hand)", ("eval_defaults_digits",), ("advtrain/commands/evaluate.py", "advtrain/attacks/presets.py")),
]


def _git(*args: str) -> tuple[int, str]:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout.strip()


def recorded_state(result: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) a result recorded: its JSON's ``git`` / ``machine.git``, else a ``Commit:`` line."""
    json_path = result.with_suffix(".json")
    if json_path.is_file():
        try:
            record = json.loads(json_path.read_text())
        except ValueError:
            record = {}
        git = record.get("git") if isinstance(record.get("git"), dict) else {}
        machine = record.get("machine") if isinstance(record.get("machine"), dict) else {}
        commit = git.get("commit") or machine.get("git")
        dirty = git.get("dirty", machine.get("dirty"))
        if commit:
            return str(commit).split()[0], dirty
    # e.g. tradeoff_digits/compare.md, written by the run that wrote tradeoff_digits.json
    if result.parent != RESULTS and RESULTS in result.parents:
        return recorded_state(result.parent.with_suffix(".md"))
    text = result.read_text(errors="replace") if result.is_file() else ""
    found = re.search(r"['\"]git['\"]: ['\"]([0-9a-f]{7,40})", text) or re.search(r"\bcommit ([0-9a-f]{7,40})\b", text)
    return (found.group(1) if found else None), None


def staleness(result: Path, bench: Bench) -> str | None:
    """Why ``result`` is older than the code it measures, or None when it is current."""
    commit, dirty = recorded_state(result)
    if commit is None:
        return "no recorded commit"
    code, _ = _git("cat-file", "-e", f"{commit}^{{commit}}")
    if code != 0 or _git("merge-base", "--is-ancestor", commit, "HEAD")[0] != 0:
        return f"commit {commit} is not in this history"
    paths = [p for p in bench.sources() if (ROOT / p).exists()]
    _, changed = _git("log", "--format=%h", f"{commit}..HEAD", "--", *paths)
    if changed:
        commits = changed.splitlines()
        return f"measured at {commit}; {len(commits)} later commits touch what it measures (newest {commits[0]})"
    if dirty:
        return f"measured at {commit} on a dirty tree"
    return None


def result_files() -> list[Path]:
    """Every committed result: one per name (the .md, else the .json), in bench/results and below."""
    names = {p.with_suffix("") for p in RESULTS.rglob("*") if p.suffix in (".md", ".json") and p.is_file()}
    return sorted(n.with_suffix(".md") if n.with_suffix(".md").exists() else n.with_suffix(".json") for n in names)


def owner(result: Path) -> Bench | None:
    rel = result.relative_to(RESULTS).with_suffix("").as_posix()
    return next((b for b in BENCHES if any(Path(rel).match(g) and rel.count("/") == g.count("/") for g in b.results)),
                None)


def stale_report() -> list[tuple[str, str]]:
    rows = []
    for result in result_files():
        bench = owner(result)
        rel = result.relative_to(ROOT).as_posix()
        why = "no benchmark in bench/run_all.py BENCHES claims it" if bench is None else staleness(result, bench)
        if why:
            rows.append((rel, why))
    return rows


STALE_NOTE = "> **Stale** (`make bench-stale`): "


def mark_stale(rows: list[tuple[str, str]]) -> None:
    """Put (or refresh) a one-line stale note at the top of each stale Markdown result."""
    for rel, why in rows:
        path = ROOT / rel
        if path.suffix != ".md":
            continue
        lines = path.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith(STALE_NOTE):
            lines = lines[2:] if len(lines) > 1 and not lines[1].strip() else lines[1:]
        note = f"{STALE_NOTE}{why}. Rerun with the command below to refresh it.\n\n"
        path.write_text(note + "".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the long benchmarks too (about an hour on a CPU)")
    parser.add_argument("--stale", action="store_true", help="list results older than the code they measure")
    parser.add_argument("--mark", action="store_true", help="with --stale: note it at the top of each stale .md")
    args = parser.parse_args()
    if args.stale:
        rows = stale_report()
        if args.mark:
            mark_stale(rows)
        for rel, why in rows:
            print(f"{rel}: {why}")
        print(f"{len(rows)} of {len(result_files())} results are stale")
        return
    for bench in BENCHES:
        for rest in ([bench.quick] if bench.quick is not None else []) + (list(bench.full) if args.full else []):
            print(f"== {bench.script} {' '.join(rest)}", flush=True)
            subprocess.run([sys.executable, str(HERE / bench.script), *rest], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
