"""PAT (Fast-LPA perceptual adversarial training) on the full data vs PAT + adversarial GradMatch coresets.

Paper Table 2 in small: the same perceptual recipe, only the selector changes. Each model is then
evaluated on the test split against PAT's unseen threat models (AutoAttack ℓ∞ 8/255 and ℓ2 1,
StAdv 0.05, ReColorAdv 0.06; union over them) and the perceptual attacks PPGD and LPA at the
training bound (LPIPS-self, as the models are trained), with times.

    python bench/perceptual_compare.py --dataset digits
    python bench/perceptual_compare.py --dataset cifar10 --n-train 4000 --n-test 200 --epochs 10
"""

from __future__ import annotations

import argparse
import shutil
import time

from _common import LOCAL, cifar_subset, command_line, machine, write_result

from advtrain.attacks.presets import resolve_eval_attacks
from advtrain.config.load import load_recipe
from advtrain.eval.robust import evaluate
from advtrain.io.run_folder import RunFolder
from advtrain.train.loop import Trainer
from advtrain.ui.console import SilentReporter


def overrides_for(args: argparse.Namespace) -> tuple[str, list[str]]:
    warm = max(1, round(args.epochs * args.warm))
    every = max(1, round(args.epochs * args.every))
    common = [f"schedule.epochs={args.epochs}", f"schedule.warm_start_epochs={warm}",
              f"schedule.select_every={every}", "eval.every=0", "device=cpu", f"seed={args.seed}",
              f"attack.bound={args.bound}"]
    if args.dataset == "digits":
        return "recipes/digits_perceptual.yaml", common
    path = cifar_subset(args.n_train, args.n_test)
    extra = [f"data.path={path}", "data.download=false", "data.val_fraction=0.02", "data.num_workers=0",
             f"model.name={args.model}", "precision=fp32", "optim.lr=0.05", "lr_schedule=cosine",
             "data.batch_size=128", "eval.n_examples=100"]
    return "recipes/cifar10_perceptual.yaml", common + extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warm", type=float, default=0.3, help="warm-start epochs as a fraction of epochs")
    parser.add_argument("--every", type=float, default=0.15, help="select every (fraction of epochs)")
    parser.add_argument("--fraction", type=float, default=0.4, help="GradMatch coreset fraction (paper: 40%%)")
    parser.add_argument("--bound", type=float, default=0.25, help="Fast-LPA training bound (LPIPS-self)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--model", default="resnet_tiny_cifar")
    parser.add_argument("--steps", type=int, default=40, help="steps of PPGD / LPA (per λ round)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recipe_path, common = overrides_for(args)
    names = ["unseen", f"ppgd{args.steps}@{args.bound:g}", f"lpa{args.steps}@{args.bound:g}"]
    rows = []
    for method in ("full", "gradmatch"):
        out = LOCAL / "bench_runs" / f"pat_{args.dataset}_{method}"
        shutil.rmtree(out, ignore_errors=True)
        extra = [f"selector={method}", f"output.dir={out}", f"name=bench_pat_{method}"]
        if method != "full":
            extra.append(f"selector.fraction={args.fraction}")
        trainer = Trainer(load_recipe(recipe_path, common + extra), SilentReporter())
        start = time.perf_counter()
        with RunFolder.claim(out, resuming=False, overwrite=False) as folder:
            result = trainer.fit(folder)
        wall = time.perf_counter() - start
        metrics = [m.to_json() for m in result.metrics]  # the metrics.jsonl lines
        loop = sum(m.get("train_time", 0.0) + (m.get("selection") or {}).get("total_s", 0.0) for m in metrics)
        attacks = resolve_eval_attacks(names)
        test = evaluate(trainer.model, trainer.data.test, attacks, n_examples=args.n_eval, batch_size=256,
                        device=trainer.device, num_classes=trainer.data.num_classes)
        row = {"method": method, "fraction": None if method == "full" else args.fraction, "train_seconds": wall,
               "loop_seconds": loop, "n_eval": test.n_examples, "clean_acc": test.clean_acc,
               "robust_acc": {a.name: a.robust_acc for a in test.attacks},
               "eval_seconds": {a.name: a.seconds for a in test.attacks},
               "union_unseen": test.group_union_acc.get("unseen"), "union_all": test.union_acc,
               "selection_seconds": sum((m.get("selection") or {}).get("total_s", 0.0) for m in metrics)}
        rows.append(row)
        print(f"{method:>10}: clean {row['clean_acc']:.3f} unseen-union {row['union_unseen']:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in row["robust_acc"].items())
              + f" loop {loop:.1f}s eval {sum(row['eval_seconds'].values()):.0f}s", flush=True)
    full = rows[0]
    for row in rows:
        row["speedup"] = full["loop_seconds"] / row["loop_seconds"]
    attack_names = list(rows[0]["robust_acc"])
    record = {"machine": machine(), "command": command_line(), "dataset": args.dataset, "settings": vars(args),
              "recipe": recipe_path, "overrides": common, "attacks": [a.describe() for a in attacks], "rows": rows}
    lines = [f"# PAT vs PAT + GradMatch: {args.dataset}", "", f"Command: `{command_line()}`", "",
             f"Recipe `{recipe_path}` with `{' '.join(common)}`; GradMatch fraction {args.fraction}. Loop = "
             "training epochs + selection passes (the paper's timing); speed-up = full loop / method loop. "
             f"Evaluation on the first {rows[0]['n_eval']} test images, fp32, eval mode.", "",
             f"Machine: {record['machine']}", "",
             "| method | clean | " + " | ".join(attack_names) + " | unseen union | loop (s) | speed-up |",
             "|---" * (len(attack_names) + 5) + "|"]
    for r in rows:
        label = r["method"] if r["fraction"] is None else f"{r['method']} {r['fraction']:.0%}"
        accs = " | ".join(f"{r['robust_acc'][n]:.1%}" for n in attack_names)
        lines.append(f"| {label} | {r['clean_acc']:.1%} | {accs} | {r['union_unseen']:.1%} | "
                     f"{r['loop_seconds']:.0f} | {r['speedup']:.2f}x |")
    lines += ["", "Evaluation time per attack (s, per model): " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["eval_seconds"].items()) for r in rows), "",
        "Attacks: " + "; ".join(f"`{a.name}` {a.describe()}" for a in attacks)]
    if args.dataset == "cifar10":
        lines += ["", "Measured on the JPEG-compressed CIFAR-10 copy (q75): accuracies are close to, not equal "
                  "to, real CIFAR-10."]
    write_result(f"perceptual_compare_{args.dataset}", record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
