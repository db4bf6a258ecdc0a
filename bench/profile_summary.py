"""Where a training step's time goes: a torch.profiler run summarised as a few small tables.

``profile(fn, device)`` runs ``fn`` under ``torch.profiler`` (CPU, plus CUDA activities on a GPU)
and returns a :class:`ProfileSummary`: the top operators by self device time (self CPU time on a
CPU), the top kernels, and the time grouped by kind (convolution, matmul, batchnorm,
pointwise/reductions, optimizer, copies/casts, autograd engine, other), set against the wall time
of the profiled region, so the launch gaps (wall − busy GPU time) show. No trace file is written:
the summary is what a result file keeps.

The grouping is a pure function of names (:func:`classify`), so it is tested on recorded names
without a GPU; :func:`summarise` takes plain records, :func:`records_from_profiler` reads them
from torch's event list (whose attribute names changed across torch versions: read defensively).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: (group, substrings of a lower-cased kernel or operator name), tried in this order: a name
#: matches the first group one of whose substrings it contains. Copies come before convolution
#: ("nchwToNhwc", "convert") and batchnorm before convolution (cudnn's "bn_fw" kernels).
GROUP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("autograd engine", ("autograd::engine",)),  # the engine's wrapper around each backward node
    ("optimizer", ("multi_tensor_apply", "foreach", "fused_sgd", "fused_adam", "optimizer.step", "sgd", "adam")),
    ("copy/cast", ("memcpy", "memset", "copy", "nchwtonhwc", "nhwctonchw", "_to_copy", "aten::to", "cast",
                   "convert", "contiguous", "clone", "transpose", "permute", "cat_", "catarray")),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "bn_", "welford")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "winograd", "mkldnn")),
    ("matmul", ("gemm", "gemv", "cublas", "cutlass", "nvjet", "matmul", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::linear")),
    ("autograd engine", ("evaluate_function",)),
    ("pointwise/reduction", ("elementwise", "vectorized", "reduce", "triton", "softmax", "nll", "cross_entropy",
                             "clamp", "sign", "add", "mul", "sub", "div", "where", "relu", "threshold", "max",
                             "min", "sum", "mean", "uniform", "rand", "fill", "zero", "ones", "empty", "abs")),
)


def classify(name: str, context: Sequence[str] = ()) -> str:
    """The group of a kernel or operator ``name``; ``context`` (its launching operators, innermost
    first) decides when the name itself says nothing (a kernel of a compiled graph, say)."""
    if name.startswith("triton_"):  # inductor's fused kernels list every op they fused: only batchnorm stands out
        return "batchnorm" if "batch_norm" in name else "pointwise/reduction"
    for text in (name, *context):
        low = text.lower()
        for group, needles in GROUP_RULES:
            if any(n in low for n in needles):
                return group
    return "other"


@dataclass(frozen=True)
class OpRecord:
    """One operator, averaged over its calls (``key_averages``): self times in microseconds."""

    name: str
    calls: int
    self_cpu_us: float
    self_device_us: float


@dataclass(frozen=True)
class KernelRecord:
    """One device kernel (or copy/memset) call: its duration and the operators that launched it."""

    name: str
    us: float
    start_us: float
    context: tuple[str, ...] = ()


@dataclass
class ProfileSummary:
    """The compact result of one profiled region (what the result JSON keeps)."""

    device: str
    steps: int
    images: int
    wall_ms: float
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    top_kernels: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    device_busy_ms: float | None = None
    device_kernel_sum_ms: float | None = None
    host_op_ms: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels of several streams may overlap)."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarise(ops: Sequence[OpRecord], kernels: Sequence[KernelRecord], *, device: str, wall_us: float,
              steps: int, images: int, top: int = 15) -> ProfileSummary:
    """The summary of one region from plain records (``kernels`` empty on a CPU)."""
    out = ProfileSummary(device=device, steps=steps, images=images, wall_ms=wall_us / 1e3)
    out.host_op_ms = sum(o.self_cpu_us for o in ops) / 1e3
    on_device = bool(kernels)
    key = (lambda o: o.self_device_us) if on_device else (lambda o: o.self_cpu_us)
    total = sum(key(o) for o in ops) or 1.0
    for o in sorted(ops, key=key, reverse=True)[:top]:
        if key(o) <= 0:
            break
        out.top_ops.append({"name": o.name, "calls": o.calls, "self_device_ms": o.self_device_us / 1e3,
                            "self_cpu_ms": o.self_cpu_us / 1e3, "share": key(o) / total,
                            "group": classify(o.name)})
    groups: dict[str, float] = {}
    if on_device:
        by_name: dict[str, list[float]] = {}
        for k in kernels:
            groups[classify(k.name, k.context)] = groups.get(classify(k.name, k.context), 0.0) + k.us
            by_name.setdefault(k.name, []).append(k.us)
        ksum = sum(k.us for k in kernels)
        busy = _union_us((k.start_us, k.start_us + k.us) for k in kernels)
        out.device_kernel_sum_ms, out.device_busy_ms = ksum / 1e3, busy / 1e3
        for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:10]:
            out.top_kernels.append({"name": name[:90], "calls": len(times), "ms": sum(times) / 1e3,
                                    "share": sum(times) / (ksum or 1.0), "group": classify(name)})
        idle = max(wall_us - busy, 0.0)
        rows = [(g, us) for g, us in groups.items()] + [("device idle (launch gaps, host work, syncs)", idle)]
        denominator = max(wall_us, ksum)
    else:
        for o in ops:
            groups[classify(o.name)] = groups.get(classify(o.name), 0.0) + o.self_cpu_us
        outside = max(wall_us - out.host_op_ms * 1e3, 0.0)
        rows = [(g, us) for g, us in groups.items()] + [("outside operators (Python, data)", outside)]
        denominator = max(wall_us, out.host_op_ms * 1e3)
    for group, us in sorted(rows, key=lambda r: -r[1]):
        out.groups.append({"group": group, "ms": us / 1e3, "share_of_wall": us / (denominator or 1.0)})
    return out


def _context(event: Any) -> tuple[str, ...]:
    names, parent = [], event
    while parent is not None and len(names) < 8:
        names.append(parent.name)
        parent = getattr(parent, "cpu_parent", None)
    return tuple(names)


def records_from_profiler(prof: Any) -> tuple[list[OpRecord], list[KernelRecord]]:
    """Operator averages and device kernels of a finished ``torch.profiler.profile``."""
    from torch.autograd import DeviceType

    ops = []
    for avg in prof.key_averages():
        if getattr(avg, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue
        device_us = getattr(avg, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(avg, "self_cuda_time_total", 0.0)
        ops.append(OpRecord(avg.key, int(avg.count), float(avg.self_cpu_time_total), float(device_us or 0.0)))
    kernels = []
    for event in prof.events():
        if getattr(event, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue
        start, end = event.time_range.start, event.time_range.end
        kernels.append(KernelRecord(event.name, float(end - start), float(start)))
    if kernels:  # the launching operators: each CPU event lists the kernels it launched (by name)
        contexts: dict[str, tuple[str, ...]] = {}
        for event in prof.events():
            if getattr(event, "device_type", DeviceType.CPU) == DeviceType.CPU and getattr(event, "kernels", None):
                for k in event.kernels:
                    contexts.setdefault(k.name, _context(event))
        kernels = [KernelRecord(k.name, k.us, k.start_us, contexts.get(k.name, ())) for k in kernels]
    return ops, kernels


def profile(fn: Callable[[], int], device: torch.device, *, steps: int) -> ProfileSummary:
    """Profile one call of ``fn`` (which returns the images it processed) and summarise it."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities):  # warms the profiler itself (CUPTI start), discarded
        torch.ones(8, device=device).sum().item()
    with torch_profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        images = fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    ops, kernels = records_from_profiler(prof)
    summary = summarise(ops, kernels, device=device.type, wall_us=wall_us, steps=steps, images=images)
    if cuda and not kernels:
        summary.note = "the profiler recorded no CUDA kernels (CUPTI unavailable?): host times only"
    return summary


def markdown(summary: dict[str, Any], title: str) -> list[str]:
    """The Markdown lines of one summary (from :meth:`ProfileSummary.to_dict`, as stored in JSON)."""
    s = summary
    per_step = s["wall_ms"] / max(s["steps"], 1)
    lines = [f"### {title}", "",
             f"{s['steps']} training steps, {s['images']} images, wall {s['wall_ms']:.1f} ms "
             f"({per_step:.1f} ms per step); operators' summed self CPU time {s['host_op_ms']:.1f} ms."]
    if s.get("device_busy_ms") is not None:
        busy = s["device_busy_ms"]
        lines[-1] += (f" GPU busy {busy:.1f} ms ({100 * busy / max(s['wall_ms'], 1e-9):.0f}% of wall), "
                      f"summed kernel time {s['device_kernel_sum_ms']:.1f} ms.")
    if s.get("note"):
        lines[-1] += f" Note: {s['note']}."
    unit = "device" if s.get("device_busy_ms") is not None else "CPU"
    lines += ["", "| group | ms | % of wall |", "|---|---|---|"]
    lines += [f"| {g['group']} | {g['ms']:.1f} | {100 * g['share_of_wall']:.1f} |" for g in s["groups"]]
    lines += ["", f"Top operators by self {unit} time:", "",
              f"| operator | calls | self {unit} ms | share | group |", "|---|---|---|---|---|"]
    for o in s["top_ops"]:
        value = o["self_device_ms"] if unit == "device" else o["self_cpu_ms"]
        lines.append(f"| `{o['name'][:70]}` | {o['calls']} | {value:.2f} | {100 * o['share']:.1f}% | {o['group']} |")
    if s.get("top_kernels"):
        lines += ["", "Top kernels:", "", "| kernel | calls | ms | share of kernel time | group |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{k['name'][:70]}` | {k['calls']} | {k['ms']:.2f} | {100 * k['share']:.1f}% | {k['group']} |"
                  for k in s["top_kernels"]]
    return [*lines, ""]
