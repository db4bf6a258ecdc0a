"""Train the digits default with each objective and evaluate every one under the same attacks.

    python bench/objectives_digits.py            # ~10 min on a 2-core CPU

Runs the real CLI (``advtrain run`` / ``advtrain eval``) so what is measured is what users run.
Objectives: PGD-AT (ℓ∞), Fast AT (FGSM-RS, α = 1.25ε) and TRADES (β = 6), all at ε = 0.2 on
8×8 digits; evaluation: clean, FGSM, PGD-50, CW-50 and AutoAttack (standard) on the 450 test
images at the training ε, step 2.5·ε/50 for PGD/CW.
"""

from __future__ import annotations

import json

from _common import LOCAL, advtrain, command_line, machine, parser, write_result

EPS = 0.2
# Full-data training for every objective: the digits recipe's own selector (GradMatch with a cheaper
# selection attack written over the training attack's keys) is not what this table compares.
RUNS = {
    "pgd-at": ["selector=full", "objective=adversarial", "attack=pgd", f"attack.eps={EPS}", "attack.alpha=0.05",
               "attack.steps=7"],
    "fast-at": ["selector=full", "objective=adversarial", "attack=fgsm", f"attack.eps={EPS}",
                f"attack.alpha={1.25 * EPS}"],
    "trades": ["selector=full", "objective=trades", "objective.beta=6", "attack=pgd", f"attack.eps={EPS}",
               "attack.alpha=0.05", "attack.steps=7"],
}
ATTACKS = "clean,fgsm,pgd50,cw50,aa"


def main() -> None:
    args = parser(__doc__, device=None).parse_args()
    rows = []
    for name, overrides in RUNS.items():
        out = LOCAL / "objectives_digits" / name
        train_s = advtrain("run", "recipes/digits_linf.yaml", *overrides, f"output.dir={out}", "--overwrite").seconds
        eval_s = advtrain("eval", str(out / "best.safetensors"), "--attack", ATTACKS, "--eps", str(EPS),
                          "--alpha", str(2.5 * EPS / 50), "--n-examples", "450", "--out", str(out / "eval")).seconds
        report = json.loads((out / "eval" / "report.json").read_text())
        rows.append({"objective": name, "train_seconds": train_s, "eval_seconds": eval_s,
                     "clean_acc": report["clean_acc"], "robust_acc": report["robust_acc"],
                     "attack_seconds": {a["name"]: a["seconds"] for a in report["attacks"]},
                     "union_acc": report["union_acc"], "n_examples": report["n_examples"],
                     "warnings": report["warnings"]})
    names = [a for a in ATTACKS.split(",") if a != "clean"]
    lines = ["# Objectives on digits (ε = 0.2, ℓ∞)", "", f"Command: `{command_line()}`", "",
             f"Machine: {machine()}", "",
             "| objective | train (s) | clean | " + " | ".join(names) + " | union | eval (s) |",
             "|---|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        accs = " | ".join(f"{r['robust_acc'][a]:.1%}" for a in names)
        lines.append(f"| {r['objective']} | {r['train_seconds']:.0f} | {r['clean_acc']:.1%} | {accs} | "
                     f"{r['union_acc']:.1%} | {r['eval_seconds']:.0f} |")
    lines += ["", "Per-attack evaluation time (s):", ""]
    for r in rows:
        lines.append(f"- {r['objective']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["attack_seconds"].items()))
    write_result("objectives_digits", {"machine": machine(), "command": command_line(), "rows": rows},
                 "\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    main()
