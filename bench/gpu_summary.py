"""The one table bench/gpu_check.sh prints at the end, also written as gpu_check_<device>.md.

    python bench/gpu_summary.py RESULTS_DIR ["step rc=0 12s" ...]

Reads the result files the check's steps wrote in RESULTS_DIR (missing ones are reported as such)
and sets them against the targets of the GPU-readiness issue: PGD-10 AT of ResNet-18 at batch 512
in bf16 ≥ 8,000 img/s on one H100, ≥ 3× the reference-style loop, and the 120-epoch ACS 50%
protocol under 15 minutes by the estimate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_PGD10 = 8000.0
TARGET_RATIO = 3.0
TARGET_ACS_MINUTES = 15.0


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(rows: list[dict], objective: str, compile: bool) -> dict | None:
    return next((r for r in rows if r["objective"] == objective and r["compile"] == compile), None)


def summary_lines(folder: Path, steps: list[str]) -> list[str]:
    lines = ["# GPU check", ""]
    eager, compiled = _load(folder, "throughput_cuda"), _load(folder, "throughput_cuda_compile")
    peer, acs = _load(folder, "peer_baseline_cuda"), _load(folder, "acs_short_cuda")
    machine = next((r["machine"] for r in (eager, peer, acs, compiled) if r), {})
    lines += [f"Device: {machine.get('gpu', '?')}, torch {machine.get('torch', '?')}, "
              f"git {machine.get('git', '?')}.", ""]
    if steps:
        lines += ["Steps: " + "; ".join(steps), ""]
    lines += ["| figure | value | target |", "|---|---|---|"]
    ceiling = (eager or compiled or {}).get("bf16_ceiling_tflops")
    if ceiling:
        lines.append(f"| measured bf16 matmul ceiling | {ceiling:.0f} TFLOP/s | – |")
    for label, result, compile in (("eager", eager, False), ("compiled", compiled, True)):
        if result is None:
            lines.append(f"| throughput ({label}) | missing | – |")
            continue
        for objective in ("clean", "fgsm", "pgd10", "trades10"):
            r = _row(result["rows"], objective, compile)
            if r is None:
                continue
            frac = r.get("fraction_of_measured_bf16_peak")
            extra = f", {r['tflop_per_s']:.0f} TFLOP/s" + (f" ({100 * frac:.1f}% of peak)" if frac else "")
            mem = f", peak {r['peak_gpu_gib']:.1f} GiB" if r.get("peak_gpu_gib") is not None else ""
            target = f"≥ {TARGET_PGD10:,.0f} img/s" if objective == "pgd10" else "–"
            lines.append(f"| {objective} img/s ({label}, {r['precision']}) | {r['img_per_s']:,.0f}{extra}{mem} | "
                         f"{target} |")
    if peer:
        rows = peer["rows"]
        for name in ("plain", "torchattacks"):
            if name in rows:
                lines.append(f"| advtrain vs reference-style {name} (fp32, {rows[name]['img_per_s']:,.0f} img/s) | "
                             f"{rows[name]['advtrain_speedup']:.2f}× | ≥ {TARGET_RATIO:.0f}× |")
    else:
        lines.append("| peer baseline | missing | – |")
    if acs:
        s = acs["summary"]
        sel = s["selection_s"]
        lines += [
            f"| full epoch, CIFAR-10 copy (train / wall s) | {s['full_epoch_train_s']:.1f} / "
            f"{s['full_epoch_wall_s']:.1f} | – |",
            f"| GradMatch 50% epoch (train / wall s) | {s['coreset_epoch_train_s']:.1f} / "
            f"{s['coreset_epoch_wall_s']:.1f} | – |",
            f"| selection pass: attack / features / solver (s) | {sel['attack_s']:.1f} / {sel['features_s']:.1f} / "
            f"{sel['solver_s']:.2f} | – |",
            f"| 120-epoch full AT, estimate (paper: 292.87 min) | {s['estimate_minutes']['full']:.1f} min | – |",
            f"| 120-epoch ACS 50%, estimate (paper: 148.03 min) | {s['estimate_minutes']['gradmatch']:.1f} min | "
            f"< {TARGET_ACS_MINUTES:.0f} min |"]
    else:
        lines.append("| ACS short run | missing | – |")
    return lines


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    lines = summary_lines(folder, sys.argv[2:])
    text = "\n".join(lines) + "\n"
    (folder / "gpu_check_cuda.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
