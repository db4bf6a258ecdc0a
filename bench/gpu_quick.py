"""The quick GPU check of bench/device_session.sh: its bundle (pack / unpack) and its targets table.

    python bench/gpu_quick.py pack QUICK_DIR OUT/gpu_quick.tar          # there, by device_session.sh
    python bench/gpu_quick.py unpack <files_at>/gpu_quick.tar           # here -> bench/results/
    python bench/gpu_quick.py summary bench/results [--device cuda]     # -> bench/results/gpu_quick_cuda.md

The quick check writes throughput_<device>_levers (eager vs compiled, the lever variants, the
profile), peer_baseline_<device> (advtrain vs the fp32, bf16 and compiled reference loops) and
solvers_<device> (CRAIG per class, host loop vs batched greedy) as JSON + Markdown; ``summary``
sets them against issue 22's targets 1, 3 and 5 (measured vs target, met or missed), with the
selection share of the loop projected to the paper's schedule from the campaign's records.
Unpack takes only result-named members (no folders, no links), rewrites any machine path in them
(:func:`_common.portable`) and checks that each JSON parses.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tarfile
from pathlib import Path
from typing import Any

from _common import RESULTS, portable

#: What a bundle may hold: flat result names of the quick check (and its step log).
MEMBER = re.compile(r"(?:throughput|peer_baseline|solvers|gpu_quick)_[a-z0-9]+(?:_[a-z0-9]+)*\.(?:json|md|log)")
MAX_MEMBER_BYTES = 8 * 2**20
#: Issue 22's targets.
PGD10_IMG_S, TRADES10_IMG_S, PEAK_FRACTION = 15_000.0, 12_000.0, 0.5
PEER_TARGETS = {"bf16": 1.5, "compiled": 1.1}
CRAIG_S, SELECTION_SHARE = 1.0, 0.03
#: The paper's schedule (ACS, CIFAR-10): E epochs, W warm-start epochs, re-selection every T.
PAPER = {"epochs": 120, "warm_start": 30, "select_every": 20}


class BundleError(Exception):
    """A bundle that cannot be read or written (the message says which file and why)."""


def pack(folder: Path, tar_path: Path) -> list[str]:
    """Tar every result-named file of ``folder`` (flat) into ``tar_path``; returns the names."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and MEMBER.fullmatch(p.name))
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w") as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return names


def unpack(tar_path: Path, results: Path) -> list[str]:
    """Copy the bundle's result files into ``results`` (overwriting: a new measurement replaces the old)."""
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (OSError, tarfile.TarError) as err:
        raise BundleError(f"{tar_path.name} is not a readable tar ({err}); take the gpu_quick.tar the device "
                          f"call brought back.") from None
    written = []
    with tar:
        for member in tar.getmembers():
            if not member.isfile() or not MEMBER.fullmatch(member.name) or member.size > MAX_MEMBER_BYTES:
                print(f"  skipped {member.name!r}: not a quick-check result file", flush=True)
                continue
            text = portable(tar.extractfile(member).read().decode("utf-8", errors="replace"))
            if member.name.endswith(".json"):
                try:
                    json.loads(text)
                except json.JSONDecodeError:
                    print(f"  skipped {member.name}: not JSON", flush=True)
                    continue
            results.mkdir(parents=True, exist_ok=True)
            (results / member.name).write_text(text)
            written.append(member.name)
    return written


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "missed")


def _throughput_rows(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["1", "throughput (levers)", "missing", "–", "–"]]
    ok = [r for r in result["rows"] if r.get("status", "ok") == "ok"]
    out = []
    for objective, label, target in (("pgd10", "PGD-10", PGD10_IMG_S), ("trades10", "TRADES-10", TRADES10_IMG_S)):
        def cell(r: dict) -> str:
            frac = r.get("fraction_of_measured_bf16_peak")
            return f"{r['img_per_s']:,.0f} img/s" + (f" ({100 * frac:.1f}% of peak)" if frac else "")

        for compile in (False, True):
            base = next((r for r in ok if r["objective"] == objective and r["compile"] == compile
                         and r.get("variant", "baseline") == "baseline"), None)
            how = "compiled" if compile else "eager"
            if base is None:
                continue
            if not compile:
                out.append(["1", f"{label} AT, eager, as today", cell(base), "–", "–"])
                continue
            frac = base.get("fraction_of_measured_bf16_peak")
            wanted = f"≥ {target:,.0f}" + (" and ≥ 50% of peak" if objective == "pgd10" else "")
            met = base["img_per_s"] >= target and (objective != "pgd10" or (frac or 0) >= PEAK_FRACTION)
            out.append(["1", f"{label} AT, {how}, as today", cell(base), wanted, _verdict(met)])
        levers = [r for r in ok if r["objective"] == objective and r["compile"] and
                  r.get("variant", "baseline") != "baseline"]
        if levers:
            best = max(levers, key=lambda r: r["img_per_s"])
            frac = best.get("fraction_of_measured_bf16_peak")
            ratio = best.get("ratio_to_baseline")
            met = best["img_per_s"] >= target and (objective != "pgd10" or (frac or 0) >= PEAK_FRACTION)
            out.append(["1", f"{label} AT, compiled, best lever `{best['variant']}`"
                        + (f" ({ratio:.2f}× baseline)" if ratio else ""), cell(best),
                        f"≥ {target:,.0f}", _verdict(met)])
    skipped = sorted({r["variant"] for r in result["rows"] if r.get("status") == "skipped"})
    if skipped:
        out.append(["1", "lever variants refused by the validator (not merged?)", ", ".join(skipped), "–", "–"])
    return out


def _peer_rows(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["3", "peer baseline", "missing", "–", "–"]]
    rows = result["rows"]
    adv = rows.get("advtrain", {})
    how = "compiled" if adv.get("compiled") else "eager"
    out = []
    for name, label in (("bf16", "bf16 autocast + channels_last loop"), ("compiled", "that loop under torch.compile"),
                        ("plain", "fp32 reference loop")):
        row = rows.get(name)
        if row is None:
            continue
        target = PEER_TARGETS.get(name)
        if row.get("img_per_s") is None:
            out.append(["3", f"advtrain ({how}) vs {label}", row.get("status", "failed"),
                        f"≥ {target}×" if target else "–", "–"])
            continue
        speedup = row["advtrain_speedup"]
        out.append(["3", f"advtrain ({how}, {adv.get('img_per_s', 0):,.0f} img/s) vs {label} "
                    f"({row['img_per_s']:,.0f} img/s)", f"{speedup:.2f}×", f"≥ {target}×" if target else "–",
                    _verdict(speedup >= target) if target else "–"])
    return out


def _craig_rows(result: dict | None) -> list[list[str]]:
    runs = (result or {}).get("craig_greedy") or []
    rows = [r for run in runs for r in run["rows"] if r["n"] == 50_000 and r["d"] == 10]
    if not rows:
        return [["5", "CRAIG per class 50,000 × 10", "missing", f"≤ {CRAIG_S:.0f} s", "–"]]
    out = []
    for greedy, label in (("batched", "batched greedy (no host sync per pick)"), ("host", "per-pick host loop")):
        row = next((r for r in reversed(rows) if r["greedy"] == greedy), None)
        if row is None:
            continue
        target = greedy == "batched"
        out.append(["5", f"CRAIG per class 50,000 × 10, {label}; same coreset as the host loop: "
                    f"{row.get('same_coreset')}", f"{row['seconds']:.2f} s", f"≤ {CRAIG_S:.0f} s" if target else "–",
                    _verdict(row["seconds"] <= CRAIG_S and row.get("same_coreset") is True) if target else "–"])
    return out


def paper_share(record: dict[str, Any]) -> tuple[float, float] | None:
    """(selection share of the loop as measured, projected to the paper's schedule) of one campaign record.

    The projection keeps the measured per-pass times (median full epoch, coreset epoch, selection
    pass) and counts them as the paper's schedule does: W full epochs, E − W coreset epochs and one
    selection at W, W + T, ... below E (five at E = 120, W = 30, T = 20).
    """
    epochs = record.get("epochs") or []
    passes = [e["selection"]["total_s"] for e in epochs if e.get("selection")]
    full = [e["train_time"] for e in epochs if e.get("phase") == "full" and e.get("train_time")]
    coreset = [e["train_time"] for e in epochs if e.get("phase") == "coreset" and e.get("train_time")]
    if not passes or not full or not coreset:
        return None
    measured = sum(passes) / (sum(e.get("train_time") or 0 for e in epochs) + sum(passes))
    e, w, t = PAPER["epochs"], PAPER["warm_start"], PAPER["select_every"]
    n_sel = len(range(w, e, t))
    sel = statistics.median(passes) * n_sel
    projected = sel / (w * statistics.median(full) + (e - w) * statistics.median(coreset) + sel)
    return measured, projected


def _selection_rows(campaign: Path) -> list[list[str]]:
    records = []
    for path in sorted(campaign.glob("*.json")) if campaign.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    by_selector: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        share = paper_share(rec)
        if share is not None:
            by_selector.setdefault(rec.get("schedule", {}).get("selector", "?"), []).append(share)
    if not by_selector:
        return [["5", f"selection share of the loop (campaign records in {campaign.name}/)", "no records yet",
                 f"≤ {100 * SELECTION_SHARE:.0f}%", "–"]]
    out = []
    for selector, shares in sorted(by_selector.items()):
        measured = statistics.median(s[0] for s in shares)
        projected = statistics.median(s[1] for s in shares)
        out.append(["5", f"selection share of the loop, {selector} ({len(shares)} run(s) of {campaign.name}): "
                    f"measured at its schedule {100 * measured:.1f}%; at the paper's E 120 / W 30 / T 20",
                    f"{100 * projected:.1f}%", f"≤ {100 * SELECTION_SHARE:.0f}%",
                    _verdict(projected <= SELECTION_SHARE)])
    return out


def _lever_lines(result: dict | None) -> list[str]:
    if result is None or not any(r.get("variant", "baseline") != "baseline" for r in result["rows"]):
        return []
    lines = ["## Levers (compiled unless said)", "", "| objective | compile | variant | img/s | × baseline | "
             "% of peak | note |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("status", "ok") != "ok":
            lines.append(f"| {r['objective']} | {'yes' if r['compile'] else 'no'} | {r['variant']} | {r['status']} | "
                         f"– | – | {r.get('note', '')[:160]} |")
            continue
        ratio, frac = r.get("ratio_to_baseline"), r.get("fraction_of_measured_bf16_peak")
        lines.append(f"| {r['objective']} | {'yes' if r['compile'] else 'no'} | {r.get('variant', 'baseline')} | "
                     f"{r['img_per_s']:,.0f} | {'–' if ratio is None else format(ratio, '.2f')} | "
                     f"{'–' if frac is None else format(100 * frac, '.1f')} | {r.get('note', '')} |")
    return [*lines, ""]


def _profile_lines(result: dict | None) -> list[str]:
    profiled = [r for r in (result or {}).get("rows", []) if r.get("profile") and "error" not in r["profile"]]
    if not profiled:
        return []
    lines = ["## Where the time goes (torch.profiler, a few steps; full tables in the throughput result)", ""]
    for r in profiled:
        p = r["profile"]
        groups = ", ".join(f"{g['group']} {100 * g['share_of_wall']:.0f}%" for g in p["groups"][:6])
        busy = p.get("device_busy_ms")
        head = f"{r['objective']} {r.get('variant', 'baseline')}, compile {'on' if r['compile'] else 'off'}"
        lines.append(f"- **{head}**: {p['wall_ms'] / max(p['steps'], 1):.1f} ms per step"
                     + (f", GPU busy {100 * busy / max(p['wall_ms'], 1e-9):.0f}% of wall" if busy is not None else "")
                     + f"; {groups}.")
    return [*lines, ""]


def summary_lines(folder: Path, device: str, campaign: Path, steps: list[str]) -> list[str]:
    """The Markdown of the quick check's targets (1, 3, 5 of issue 22) from the JSONs in ``folder``."""
    throughput = _load(folder, f"throughput_{device}_levers")
    peer = _load(folder, f"peer_baseline_{device}")
    solvers = _load(folder, f"solvers_{device}")
    machine = next((r["machine"] for r in (throughput, peer) if r and r.get("machine")), {})
    lines = [f"# Quick GPU check: issue 22 targets 1, 3 and 5 ({device})", "",
             f"Device: {machine.get('gpu', machine.get('cpu', '?'))}, torch {machine.get('torch', '?')}, "
             f"git {machine.get('git', '?')}{' (dirty tree)' if machine.get('dirty') else ''}. Made by "
             f"`bash bench/device_session.sh` (step 3) and `python bench/gpu_quick.py summary`; the figures and "
             f"commands are in throughput_{device}_levers, peer_baseline_{device} and solvers_{device}.", ""]
    if throughput and throughput.get("bf16_ceiling_tflops"):
        lines += [f"Measured bf16 matrix-product ceiling: {throughput['bf16_ceiling_tflops']:.0f} TFLOP/s "
                  f"(the peak the percentages refer to).", ""]
    if steps:
        lines += ["Steps: " + "; ".join(steps), ""]
    rows = [*_throughput_rows(throughput), *_peer_rows(peer), *_craig_rows(solvers), *_selection_rows(campaign)]
    lines += ["| target | figure | measured | wanted | verdict |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", *_lever_lines(throughput), *_profile_lines(throughput)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="tar a quick-check folder's result files")
    p.add_argument("folder", type=Path)
    p.add_argument("tar", type=Path)
    p = sub.add_parser("unpack", help="a device call's gpu_quick.tar into --results")
    p.add_argument("tar", type=Path)
    p.add_argument("--results", type=Path, default=RESULTS)
    p = sub.add_parser("summary", help="write gpu_quick_<device>.md from the quick check's JSONs")
    p.add_argument("folder", type=Path, nargs="?", default=RESULTS)
    p.add_argument("--device", default="cuda", help="the suffix of the result names (cuda, cpu)")
    p.add_argument("--campaign", type=Path, default=RESULTS / "campaign" / "cifar10_linf",
                   help="campaign records for the selection share (default bench/results/campaign/cifar10_linf)")
    p.add_argument("--steps-file", type=Path, default=None, help="one 'step rc=N Ss' line per step")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            names = pack(args.folder, args.tar)
            print(f"packed {len(names)} file(s) into {args.tar.name}: {', '.join(names)}")
        elif args.command == "unpack":
            written = unpack(args.tar, args.results)
            print(f"unpacked {len(written)} file(s) into {portable(args.results)}: {', '.join(written)}")
        else:
            steps = args.steps_file.read_text().splitlines() if args.steps_file and args.steps_file.is_file() else []
            text = portable("\n".join(summary_lines(args.folder, args.device, args.campaign, steps)).rstrip() + "\n")
            out = args.folder / f"gpu_quick_{args.device}.md"
            out.write_text(text)
            print(text)
    except (BundleError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
