"""Full adversarial training vs adversarial CRAIG / GradMatch / random coresets, side by side.

Same recipe, epochs and hyper-parameters for every method; only the selector changes. Reports
clean and PGD-50 accuracy on the test split, wall time, speed-up over full training and the share
of time spent in selection (split into attack / features / solver).

    python bench/coreset_compare.py --dataset digits
    python bench/coreset_compare.py --dataset cifar10 --n-train 5000 --epochs 12
    python bench/coreset_compare.py --dataset cifar10 --methods \
        "gradmatch:0.5:granularity=sample+surplus=match,gradmatch:0.5:granularity=sample+surplus=fill"

A method is ``name:fraction`` with optional ``:key=value+key=value`` selector overrides. For
GradMatch the relative matching error ‖Σ_S γ_i g_i − Σ_i g_i‖ / ‖Σ_i g_i‖ of every selection is
recorded (on the features the selection saw; per class, the error of the stacked class sums).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time

import torch
from _common import LOCAL, cifar_subset, command_line, machine, write_result

from advtrain.attacks.presets import resolve_eval_attack
from advtrain.config.load import load_recipe
from advtrain.eval.robust import evaluate
from advtrain.io.run_folder import RunFolder
from advtrain.selection import SELECTORS
from advtrain.train.loop import Trainer
from advtrain.ui.console import SilentReporter

METHODS = [("full", None), ("craig", 0.5), ("gradmatch", 0.5), ("random", 0.5), ("craig", 0.3),
           ("gradmatch", 0.3), ("random", 0.3)]


def overrides_for(args: argparse.Namespace) -> tuple[str, list[str], dict]:
    warm = max(1, round(args.epochs * args.warm))
    skip = round(args.epochs * args.skip)
    every = max(1, round(args.epochs * args.every))
    common = [f"schedule.epochs={args.epochs}", f"schedule.warm_start_epochs={warm}",
              f"schedule.skip_epochs={skip}", f"schedule.select_every={every}", "eval.every=0",
              "eval.n_examples=200", "device=cpu", f"seed={args.seed}"]
    if args.dataset == "digits":
        return "recipes/digits_linf.yaml", common, {"eps": 0.2, "alpha": 0.2 * 2.5 / 50}
    path = cifar_subset(args.n_train, args.n_test)
    recipe = "recipes/cifar10_linf.yaml"
    extra = [f"data.path={path}", "data.download=false", "data.val_fraction=0.02", "data.num_workers=0",
             f"model.name={args.model}", "precision=fp32", "attack.alpha=2/255", "attack.steps=5",
             "optim.lr=0.05", "lr_schedule=cosine", "data.batch_size=128"]
    return recipe, common + extra, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--warm", type=float, default=0.2, help="warm-start epochs as a fraction of epochs")
    parser.add_argument("--skip", type=float, default=0.0, help="reference-style skipped epochs (fraction)")
    parser.add_argument("--every", type=float, default=0.27, help="select every (fraction of epochs)")
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--model", default="resnet_tiny_cifar")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(f"{m}:{f}" for m, f in METHODS))
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe_path, common, eval_overrides = overrides_for(args)
    methods = []
    for m in args.methods.split(","):
        parts = m.split(":")
        keys = [kv for kv in parts[2].split("+") if kv] if len(parts) > 2 else []
        methods.append((parts[0], None if parts[1] == "None" else float(parts[1]), keys))
    errors: list[float] = []
    _record_matching_errors(errors)
    rows = []
    for name, fraction, keys in methods:
        tag = f"{name}" if fraction is None else f"{name}_{int(fraction * 100)}"
        tag += "".join(f"_{kv.split('=')[1]}" for kv in keys)
        out = LOCAL / "bench_runs" / f"{args.dataset}_{tag}"
        shutil.rmtree(out, ignore_errors=True)
        extra = [f"selector={name}", f"output.dir={out}", f"name=bench_{tag}"] + [f"selector.{kv}" for kv in keys]
        if fraction is not None:
            extra.append(f"selector.fraction={fraction}")
        recipe = load_recipe(recipe_path, common + extra)
        trainer = Trainer(recipe, SilentReporter())
        errors.clear()
        start = time.perf_counter()
        with RunFolder.claim(out, resuming=False, overwrite=False) as folder:
            result = trainer.fit(folder)
        wall = time.perf_counter() - start
        attacks = [resolve_eval_attack("pgd50", **eval_overrides)]
        test = evaluate(trainer.model, trainer.data.test, attacks, n_examples=args.n_eval, batch_size=256,
                        device=trainer.device, num_classes=trainer.data.num_classes)
        metrics = [m.to_json() for m in result.metrics]  # the metrics.jsonl lines
        sel = [m["selection"] for m in metrics if m.get("selection")]
        loop = sum(m.get("train_time", 0.0) + (m.get("selection") or {}).get("total_s", 0.0) for m in metrics)
        row = {
            "method": name, "fraction": fraction, "selector_overrides": keys, "matching_errors": list(errors),
            "train_seconds": wall, "loop_seconds": loop,
            "clean_acc": test.clean_acc, "pgd50_acc": test.attacks[0].robust_acc,
            "selections": len(sel),
            "selection_seconds": sum(s["total_s"] for s in sel),
            "attack_seconds": sum(s["attack_s"] for s in sel),
            "features_seconds": sum(s["features_s"] for s in sel),
            "solver_seconds": sum(s["solver_s"] for s in sel),
            "mean_full_epoch_seconds": _mean([m["train_time"] for m in metrics if m["phase"] == "full"]),
        }
        rows.append(row)
        print(f"{tag:>14}: clean {row['clean_acc']:.3f} pgd50 {row['pgd50_acc']:.3f} "
              f"wall {wall:.1f}s loop {loop:.1f}s selection {row['selection_seconds']:.1f}s", flush=True)
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in rows:
        row["speedup"] = full["loop_seconds"] / row["loop_seconds"] if full else None
        row["wall_speedup"] = full["train_seconds"] / row["train_seconds"] if full else None
        row["selection_share"] = row["selection_seconds"] / row["loop_seconds"]
        # Per selection, against a full epoch: the full run's, else the run's own warm-start epochs.
        epoch = full["mean_full_epoch_seconds"] if full else row.get("mean_full_epoch_seconds")
        row["solver_share_of_full_epoch"] = (row["solver_seconds"] / max(row["selections"], 1) / epoch
                                             if epoch else None)
    record = {"machine": machine(), "command": command_line(), "dataset": args.dataset,
              "settings": vars(args), "recipe": recipe_path, "overrides": common, "rows": rows}
    lines = [f"# Coreset benchmark: {args.dataset}", "", f"Command: `{command_line()}`", "",
             f"Schedule: {args.epochs} epochs, warm start {round(args.epochs * args.warm)}, skipped "
             f"{round(args.epochs * args.skip)}, re-select every {max(1, round(args.epochs * args.every))}; "
             "loop = training epochs + selection passes (the paper's timing: no evaluation, checkpoints or "
             "start-up); speed-up = full loop / method loop; wall speed-up includes start-up and the final "
             "test evaluation.", "",
             f"Machine: {record['machine']}", "",
             f"Overrides: `{' '.join(common)}`", "",
             "| method | fraction | clean | PGD-50 | loop (s) | speed-up | wall (s) | wall speed-up | selection share "
             "| solver / epoch | matching error per selection |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["method"] + "".join(f" {kv}" for kv in r["selector_overrides"])
        errs = ", ".join(f"{e:.2g}" for e in r["matching_errors"]) or "-"
        lines.append(f"| {label} | {r['fraction'] or 1.0} | {r['clean_acc']:.2%} | {r['pgd50_acc']:.2%} | "
                     f"{r['loop_seconds']:.1f} | {_times(r['speedup'])} | {r['train_seconds']:.1f} | "
                     f"{_times(r['wall_speedup'])} | {r['selection_share']:.1%} | "
                     f"{_share(r['solver_share_of_full_epoch'])} | {errs} |")
    if args.dataset == "cifar10":
        lines += ["", "Measured on the JPEG-compressed CIFAR-10 copy (q75): accuracies are close to, not equal "
                  "to, real CIFAR-10."]
    write_result(f"coreset_compare_{args.dataset}{'_' + args.tag if args.tag else ''}", record, "\n".join(lines) + "\n")


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _record_matching_errors(sink: list[float]) -> None:
    """Wrap the GradMatch selector so each selection appends its relative matching error to ``sink``."""
    entry = SELECTORS.get("gradmatch")

    class Recording(entry.constructor):
        def __call__(self, features, labels, **kwargs):
            sel = super().__call__(features, labels, **kwargs)
            feats = features.cpu().double()
            groups = [labels == c for c in labels.unique()] if self.params.per_class else \
                [torch.ones_like(labels, dtype=bool)]
            target = torch.cat([feats[g].sum(0) for g in groups])
            member = torch.zeros(len(labels), dtype=torch.float64)
            member[sel.indices] = sel.weights.double()
            approx = torch.cat([(member[g][:, None] * feats[g]).sum(0) for g in groups])
            sink.append(float((approx - target).norm() / target.norm()))
            return sel

    SELECTORS._entries["gradmatch"] = dataclasses.replace(entry, constructor=Recording)


def _times(value: float | None) -> str:
    """A speed-up cell; "-" when the methods did not include full training to compare with."""
    return "-" if value is None else f"{value:.2f}x"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
