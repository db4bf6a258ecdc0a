"""Training throughput (img/s) of advtrain's real training step per objective, model and lever.

    python bench/throughput.py                       # CPU-small defaults (a few minutes)
    python bench/throughput.py --device cuda --models resnet18_cifar --batch-size 512 --steps 50 --compile both
    python bench/throughput.py --device cuda --objectives pgd10 --compile on --variants levers --profile
    python bench/throughput.py --set optim.fused=true --variants "ro:train.compile_mode=reduce-overhead"

Builds a Trainer on synthetic 32×32 data held in memory (no disk I/O), runs one warm-up pass, then
times ``Trainer.train_epoch`` (attack + forward + backward + step, exactly what ``advtrain run``
does) ``--repeats`` times and reports the median images per second, the peak GPU memory, and the
arithmetic rate reached: FLOPs per image are *counted* (``torch.utils.flop_counter`` over one real
training step of each objective, attack included), and on CUDA the bf16 matrix-product rate is
measured in the same run (an 8192³ product) as the ceiling.

Levers are recipe overrides, so a lever another branch adds is measured without editing this file:
``--set KEY=VALUE`` applies to every trainer; ``--variants`` measures several override sets back to
back in one process (``NAME:KEY=VAL,KEY=VAL;NAME2:...``, a YAML/JSON file mapping names to override
lists, or ``levers``: the issue-22 set) against the baseline. Overrides pass the recipe validator:
a bad ``--set`` stops with its message (exit 2); a variant the validator refuses (a lever not merged
on this branch) is reported as skipped and the other variants still run. ``--profile`` adds a
torch.profiler summary of a few steps (:mod:`profile_summary`): where the time goes, by kind.
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from _common import (
    LOCAL,
    add_results_arg,
    command_line,
    gpu_peak_memory_gib,
    gpu_peak_memory_reset,
    machine,
    write_result,
)
from profile_summary import markdown as profile_markdown
from profile_summary import profile

from advtrain.config.read import apply_overrides, parse_override
from advtrain.config.validate import validate
from advtrain.errors import RecipeError
from advtrain.train.loop import Trainer
from advtrain.ui.console import SilentReporter

OBJECTIVES = {
    "clean": {"objective": {"name": "clean"}, "attack": None},
    "fgsm": {"objective": {"name": "adversarial"},
             "attack": {"name": "fgsm", "eps": "8/255", "alpha": "10/255"}},
    "pgd10": {"objective": {"name": "adversarial"},
              "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 10}},
    "trades10": {"objective": {"name": "trades", "beta": 6.0},
                 "attack": {"name": "pgd", "eps": "8/255", "alpha": "2/255", "steps": 10}},
}
#: Datasheet dense bf16 rate (TFLOP/s) for reference next to the measured one.
DATASHEET_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
#: ``--variants levers``: the levers of issue 22 all together, then each alone, in the order a run
#: cut short by ``--time-limit`` should keep them (all: target 1; CUDA graphs: the launch-bound steps).
LEVERS = {
    "all": ("optim.fused=true", "train.fold_bn=true", "train.compile_mode=reduce-overhead"),
    "reduce_overhead": ("train.compile_mode=reduce-overhead",),
    "fold_bn": ("train.fold_bn=true",),
    "fused": ("optim.fused=true",),
}
BASELINE = "baseline"
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,40}")


@dataclass(frozen=True)
class Variant:
    """One lever combination: a name and the recipe overrides it adds to every trainer's recipe."""

    name: str
    overrides: tuple[str, ...] = ()


class VariantsError(ValueError):
    """A ``--variants`` value that cannot be read (the message says what would be right)."""


def parse_variants(text: str | None) -> list[Variant]:
    """The variants to measure, the baseline (no overrides) first unless the spec names its own.

    ``text``: ``levers``; a ``.yaml``/``.yml``/``.json`` file mapping each name to a list of
    ``key=value`` strings (or to a mapping of keys to values); or ``NAME:KEY=VAL,KEY=VAL;NAME2:...``.
    """
    variants: list[Variant] = []
    if not text:
        pass
    elif text == "levers":
        variants = [Variant(n, o) for n, o in LEVERS.items()]
    elif text.endswith((".yaml", ".yml", ".json")):
        path = Path(text)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise VariantsError(f"--variants {text}: cannot read it ({err}); give a YAML/JSON mapping "
                                f"name -> [key=value, ...]") from None
        if not isinstance(data, dict):
            raise VariantsError(f"--variants {text}: expected a mapping name -> [key=value, ...], "
                                f"got {type(data).__name__}")
        for name, spec in data.items():
            if isinstance(spec, dict):
                overrides = tuple(f"{k}={_yaml_scalar(v)}" for k, v in spec.items())
            elif isinstance(spec, list) and all(isinstance(o, str) for o in spec):
                overrides = tuple(spec)
            elif spec is None:
                overrides = ()
            else:
                raise VariantsError(f"--variants {text}: variant {name!r} must be a list of key=value strings "
                                    f"or a mapping key -> value")
            variants.append(Variant(str(name), overrides))
    else:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, rest = part.partition(":")
            if not sep:
                raise VariantsError(f"--variants: {part!r} has no ':'; write NAME:KEY=VAL,KEY=VAL;NAME2:... "
                                    f"(e.g. fused:optim.fused=true;ro:train.compile_mode=reduce-overhead)")
            variants.append(Variant(name.strip(), tuple(o.strip() for o in rest.split(",") if o.strip())))
    names = [v.name for v in variants]
    for v in variants:
        if not VARIANT_NAME.fullmatch(v.name):
            raise VariantsError(f"--variants: name {v.name!r} must be 1-40 letters, digits or _ . + -")
        if names.count(v.name) > 1:
            raise VariantsError(f"--variants: name {v.name!r} is given twice")
        for override in v.overrides:  # the form now; whether the key exists is the validator's, per row
            try:
                parse_override(override)
            except RecipeError as err:
                raise VariantsError(f"--variants: variant {v.name!r}: {'; '.join(err.problems)}") from None
    if BASELINE not in names:
        variants.insert(0, Variant(BASELINE))
    return variants


def _yaml_scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def recipe_dict(model: str, objective: str, args: argparse.Namespace, *, compile: bool, batch_size: int,
                steps: int) -> dict:
    """The bench's recipe before overrides: synthetic data, one epoch of ``steps`` batches."""
    return {
        "name": "throughput", "seed": 0, "device": args.device, "precision": args.precision,
        "data": {"name": "synthetic", "n_train": batch_size * steps, "n_test": 16, "num_classes": 10,
                 "image_size": 32, "channels": 3, "batch_size": batch_size, "val_fraction": 0.0,
                 "augment": "crop_flip"},
        "model": {"name": model}, "selector": {"name": "full"}, "schedule": {"epochs": 1},
        "optim": {"name": "sgd", "lr": 0.01}, "train": {"compile": compile, "log_every": 50},
        "eval": {"attacks": ["clean"], "n_examples": 1}, "output": {"dir": str(LOCAL / "bench_throughput")},
        **OBJECTIVES[objective],
    }


def build_trainer(model: str, objective: str, args: argparse.Namespace, *, compile: bool = False,
                  batch_size: int | None = None, steps: int | None = None,
                  overrides: tuple[str, ...] = ()) -> Trainer:
    """A Trainer for ``objective``: ``args.set`` (``--set``) and then ``overrides`` applied to the
    recipe, which then goes through the same validator as ``advtrain run`` (RecipeError if refused)."""
    recipe = recipe_dict(model, objective, args, compile=compile, batch_size=batch_size or args.batch_size,
                         steps=steps or args.steps)
    recipe = apply_overrides(recipe, [*(getattr(args, "set", None) or []), *overrides])
    return Trainer(validate(recipe, source="the bench recipe"), SilentReporter())


def check_overrides(model: str, objective: str, args: argparse.Namespace, compile: bool) -> None:
    """Validate ``--set`` once before anything is measured: a bad override stops the bench (exit 2)."""
    if not getattr(args, "set", None):
        return
    recipe = recipe_dict(model, objective, args, compile=compile, batch_size=args.batch_size, steps=args.steps)
    try:
        validate(apply_overrides(recipe, list(args.set)), source="the bench recipe")
    except RecipeError as err:
        print(f"{Path(sys.argv[0]).name}: --set refused by the recipe validator:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None


class _FlopCount:
    """Counts matrix-product and convolution FLOPs of every aten call (forward and backward).

    torch's ``FlopCounterMode`` also tracks modules with backward hooks, which refuse the attack's
    ``autograd.grad`` w.r.t. the input; its per-op FLOP formulas (``flop_registry``) are used here
    in a plain dispatch mode instead.
    """

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        class Mode(TorchDispatchMode):
            flops = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                count = flop_registry.get(func._overloadpacket)
                if count is not None:
                    self.flops += count(*args, **kwargs, out_val=out)
                return out

        return Mode()


def flops_per_image(model: str, objective: str, args: argparse.Namespace) -> float:
    """FLOPs of one training step (attack, forward, backward) per image, counted on a small batch."""
    batch = 16
    trainer = build_trainer(model, objective, args, batch_size=batch, steps=1)
    counter = _FlopCount()
    with counter:
        trainer.train_epoch(0, "full")
    return counter.flops / batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: str, objective: str, args: argparse.Namespace, compile: bool,
            variant: Variant = Variant(BASELINE), profile_steps: int = 0) -> dict:
    """One row: the median img/s of ``args.repeats`` timed epochs after a warm-up epoch, and, with
    ``profile_steps``, a profile of that many further steps of the same (warm) trainer."""
    gpu_peak_memory_reset()
    trainer = build_trainer(model, objective, args, compile=compile, overrides=variant.overrides)
    start = time.perf_counter()
    trainer.train_epoch(0, "full")  # warm-up: cuDNN autotuning, compilation, allocator
    _sync(trainer.device)
    warmup = time.perf_counter() - start
    times = []
    for repeat in range(args.repeats):
        _sync(trainer.device)
        start = time.perf_counter()
        stats = trainer.train_epoch(repeat + 1, "full")
        _sync(trainer.device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    fallback = getattr(trainer.train_model, "fallback", None)
    row = {"model": model, "objective": objective, "compile": compile, "variant": variant.name,
           "overrides": list(variant.overrides), "status": "ok",
           "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
           "images": stats["samples"], "median_seconds": seconds, "img_per_s": stats["samples"] / seconds,
           "all_seconds": times, "warmup_seconds": warmup, "peak_gpu_gib": gpu_peak_memory_gib(),
           "note": f"compile fell back to eager: {fallback}" if fallback else ""}
    if profile_steps:
        row["profile"] = _profile_trainer(trainer, profile_steps, args.repeats + 1)
    return row


def _profile_trainer(trainer: Trainer, steps: int, epoch: int) -> dict:
    """A profile of ``steps`` training steps of a warm trainer (its epoch capped meanwhile)."""
    cap = trainer.recipe.train.max_steps_per_epoch
    trainer.recipe.train.max_steps_per_epoch = steps
    try:
        batches = min(steps, -(-len(trainer.data.train) // trainer.data.batch_size))
        summary = profile(lambda: trainer.train_epoch(epoch, "full")["samples"], trainer.device, steps=batches)
        return summary.to_dict()
    except Exception as err:  # noqa: BLE001 - a profiler failure costs the profile, not the measured row
        return {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}"}
    finally:
        trainer.recipe.train.max_steps_per_epoch = cap


def matmul_tflops(device: str, dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 10) -> float | None:
    """The measured bf16 matrix-product ceiling on ``device`` (random data, median of events)."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


@dataclass(frozen=True)
class Planned:
    """One row to measure: a variant of one objective of one model, eager or compiled."""

    model: str
    objective: str
    compile: bool
    variant: Variant

    def row(self, status: str, note: str) -> dict:
        return {"model": self.model, "objective": self.objective, "compile": self.compile,
                "variant": self.variant.name, "overrides": list(self.variant.overrides), "status": status,
                "note": note}


def plan_rows(models: list[str], objectives: list[str], compiles: list[bool], variants: list[Variant],
              variant_objectives: list[str], variant_compiles: list[bool]) -> list[Planned]:
    """The rows in measuring order: every baseline row first (model by model), then each variant."""
    rows = []
    for model in models:
        rows += [Planned(model, o, c, variants[0]) for c in compiles for o in objectives]
        for v in variants[1:]:
            rows += [Planned(model, o, c, v) for c in variant_compiles for o in variant_objectives]
    return rows


def _failure(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, RecipeError):  # each problem without its list of valid keys: the key is the news
        return "; ".join(p.split(" (valid:")[0] for p in err.problems)[:400]
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", default="resnet18_cifar" if cuda else "resnet_tiny_cifar,small_cnn")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 64)
    parser.add_argument("--steps", type=int, default=50 if cuda else 3, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"],
                        help="train.compile for the timed trainers (both: one row each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every trainer (repeatable), e.g. optim.fused=true")
    parser.add_argument("--variants", default=None,
                        help="lever combinations measured against the baseline in this run: 'levers' (all, "
                             "reduce_overhead, fold_bn, fused), a .yaml/.json file name -> [key=value, ...], "
                             "or NAME:KEY=VAL,KEY=VAL;NAME2:...")
    parser.add_argument("--variant-objectives", default=None, help="objectives of the variant rows (default: all)")
    parser.add_argument("--variant-compile", default=None, choices=["off", "on", "both"],
                        help="train.compile of the variant rows (default: as --compile)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler summary of a few steps")
    parser.add_argument("--profile-objective", default="pgd10")
    parser.add_argument("--profile-variants", default=BASELINE, help="comma list of variants to profile")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="seconds: start no row the time left cannot hold (0: no limit); rows left out "
                             "are listed as not run")
    parser.add_argument("--name", default=None, help="result file name (default throughput_<device>)")
    add_results_arg(parser)
    args = parser.parse_args()
    choices = {"off": [False], "on": [True], "both": [False, True]}
    compiles = choices[args.compile]
    variant_compiles = choices[args.variant_compile] if args.variant_compile else compiles
    objectives = args.objectives.split(",")
    variant_objectives = args.variant_objectives.split(",") if args.variant_objectives else objectives
    unknown = sorted(set(objectives + variant_objectives + [args.profile_objective]) - set(OBJECTIVES))
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    try:
        variants = parse_variants(args.variants)
    except VariantsError as err:
        parser.error(str(err))
    models = args.models.split(",")
    check_overrides(models[0], objectives[0], args, compiles[0])
    profiled = set(args.profile_variants.split(",")) if args.profile else set()
    began = time.perf_counter()
    ceiling = matmul_tflops(args.device)
    flops: dict[tuple[str, str], float | None] = {}
    rows: list[dict] = []
    longest: dict[bool, float] = {}
    for planned in plan_rows(models, objectives, compiles, variants, variant_objectives, variant_compiles):
        left = args.time_limit - (time.perf_counter() - began) if args.time_limit else None
        if left is not None and left < longest.get(planned.compile, 0.0):
            rows.append(planned.row("not run", f"time limit ({args.time_limit:.0f} s)"))
            continue
        key = (planned.model, planned.objective)
        if key not in flops:
            try:
                flops[key] = flops_per_image(planned.model, planned.objective, args)
            except Exception as err:  # noqa: BLE001 - without a count the row still has its img/s
                flops[key] = None
                print(f"FLOP count failed for {key}: {_failure(err)}", flush=True)
        if planned.variant.name != BASELINE and planned.compile:
            torch._dynamo.reset()  # each variant compiles afresh: no stale graphs, no recompile limit
        started = time.perf_counter()
        profile_steps = args.profile_steps if (planned.variant.name in profiled
                                               and planned.objective == args.profile_objective) else 0
        try:
            row = measure(planned.model, planned.objective, args, planned.compile, planned.variant, profile_steps)
        except RecipeError as err:
            row = planned.row("skipped", f"refused by the recipe validator: {_failure(err)}")
        except Exception as err:  # noqa: BLE001 - one failing lever must not cost the other rows
            row = planned.row("failed", _failure(err))
        longest[planned.compile] = max(longest.get(planned.compile, 0.0), time.perf_counter() - started)
        _release(args.device)
        f = flops[key]
        if row["status"] == "ok":
            row["gflop_per_image"] = f / 1e9 if f else None
            row["tflop_per_s"] = row["img_per_s"] * f / 1e12 if f else None
            print(f"{planned.model:>18} {planned.objective:>9} {planned.variant.name:>16} "
                  f"compile={str(planned.compile):5}: {row['img_per_s']:9.1f} img/s  "
                  f"{row['tflop_per_s'] or 0:7.1f} TFLOP/s  peak {row['peak_gpu_gib'] or 0:.2f} GiB", flush=True)
        else:
            print(f"{planned.model:>18} {planned.objective:>9} {planned.variant.name:>16} "
                  f"compile={str(planned.compile):5}: {row['status']}: {row['note']}", flush=True)
        rows.append(row)
        write(rows, args, ceiling=ceiling, variants=variants)
    write(rows, args, ceiling=ceiling, variants=variants)


def _derived(rows: list[dict], ceiling: float | None, datasheet: float | None) -> None:
    """Per row: cost vs clean, fraction of peak, ratio to the baseline row of the same cell."""
    def cell(r: dict, variant: str, objective: str | None = None) -> dict | None:
        return next((b for b in rows if b["status"] == "ok" and b["model"] == r["model"] and b["variant"] == variant
                     and b["objective"] == (objective or r["objective"]) and b["compile"] == r["compile"]), None)

    for row in rows:
        if row["status"] != "ok":
            continue
        clean = cell(row, row["variant"], "clean")
        base = cell(row, BASELINE)
        tflops = row.get("tflop_per_s")
        row["cost_vs_clean"] = clean["img_per_s"] / row["img_per_s"] if clean else None
        row["ratio_to_baseline"] = row["img_per_s"] / base["img_per_s"] if base else None
        row["fraction_of_measured_bf16_peak"] = tflops / ceiling if ceiling and tflops else None
        row["fraction_of_datasheet_bf16_peak"] = tflops / datasheet if datasheet and tflops else None


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def write(rows: list[dict], args: argparse.Namespace, *, ceiling: float | None,
          variants: list[Variant] | None = None) -> None:
    """The result files (also written after every row, so a run stopped by its time limit keeps what it measured)."""
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else ""
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k in gpu), None)
    variants = variants or [Variant(BASELINE)]
    _derived(rows, ceiling, datasheet)
    overrides = "; ".join(f"`--set {o}`" for o in getattr(args, "set", []) or [])
    lines = ["# Training throughput", "", f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Batch {args.batch_size}, {args.steps} batches per pass, median of {args.repeats} passes after a "
             f"warm-up pass, precision {args.precision}, device {args.device}; synthetic 32×32 data in memory. "
             f"GFLOP/image counted with torch.utils.flop_counter over one real training step (attack included)."
             + (f" Every trainer: {overrides}." if overrides else ""), ""]
    if ceiling:
        lines += [f"Measured bf16 matrix-product ceiling (8192³, random data): **{ceiling:.0f} TFLOP/s**"
                  + (f" (datasheet dense bf16: {datasheet:.0f})" if datasheet else "") + ".", ""]
    if len(variants) > 1:
        lines += ["Variants (recipe overrides on top of the baseline; × baseline = img/s over the baseline row of "
                  "the same model, objective and compile setting): "
                  + "; ".join(f"**{v.name}** {', '.join(f'`{o}`' for o in v.overrides) or '(none)'}" for v in variants)
                  + ".", ""]
    order = {v.name: i for i, v in enumerate(variants)}
    objectives = list(OBJECTIVES)
    ranked = sorted(rows, key=lambda r: (r["model"], r["compile"], objectives.index(r["objective"]),
                                         order.get(r["variant"], len(order))))
    lines += ["| model | objective | compile | variant | precision | img/s | × baseline | × cost of clean | "
              "GFLOP/img | TFLOP/s | % of measured bf16 peak | peak GPU GiB | warm-up s | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ranked:
        compiled = "yes" if r["compile"] else "no"
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['objective']} | {compiled} | {r['variant']} | – | {r['status']} | – | "
                         f"– | – | – | – | – | – | {r['note']} |")
            continue
        lines.append(
            f"| {r['model']} | {r['objective']} | {compiled} | {r['variant']} | {r['precision']} | "
            f"{r['img_per_s']:.1f} | {_fmt(r['ratio_to_baseline'], '.2f')} | {_fmt(r['cost_vs_clean'], '.1f')} | "
            f"{_fmt(r.get('gflop_per_image'), '.2f')} | {_fmt(r.get('tflop_per_s'), '.1f')} | "
            f"{_fmt(r['fraction_of_measured_bf16_peak'], '.1f', 100)} | {_fmt(r['peak_gpu_gib'], '.2f')} | "
            f"{r['warmup_seconds']:.1f} | {r['note']} |")
    profiles = [r for r in ranked if r.get("profile")]
    if profiles:
        lines += ["", "## Profile: where the time goes", "",
                  "torch.profiler over a few training steps of the warm trainer (after its timed passes); groups "
                  "by kernel name (on a GPU) or operator name (on a CPU); device idle = wall − union of kernel "
                  "intervals: launch gaps, host work and syncs.", ""]
        for r in profiles:
            title = f"{r['model']} {r['objective']}, {r['variant']}, compile {'on' if r['compile'] else 'off'}"
            if "error" in r["profile"]:
                lines += [f"### {title}", "", f"Profile failed: {r['profile']['error']}", ""]
            else:
                lines += profile_markdown(r["profile"], title)
    write_result(args.name or f"throughput_{args.device.split(':')[0]}",
                 {"machine": machine(), "command": command_line(),
                  "settings": {**vars(args), "results": str(args.results)}, "bf16_ceiling_tflops": ceiling,
                  "datasheet_bf16_tflops": datasheet,
                  "variants": [{"name": v.name, "overrides": list(v.overrides)} for v in variants], "rows": rows},
                 "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
