"""``advtrain eval``: rebuild model and data from a checkpoint's own recipe and attack it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from advtrain import __version__, build
from advtrain.config.load import recipe_from_yaml_text
from advtrain.config.params_check import check_flag
from advtrain.config.schema import EvalConfig
from advtrain.errors import UserError
from advtrain.eval.robust import evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.files import write_text
from advtrain.io.outputs import claim_output_dir
from advtrain.io.run_files import write_json
from advtrain.params import FractionError, format_number, parse_number
from advtrain.reports.evaluation import (
    eval_markdown,
    eval_record,
    masking_warnings,
    plot_eps_sweep,
    threat_model,
)
from advtrain.runtime.device import pick_device
from advtrain.runtime.seeding import seed_everything
from advtrain.runtime.threads import setup_threads

#: What one evaluation writes into its report folder.
EVAL_FILES = ("report.json", "report.md", "robust_vs_eps.png")


def newest_checkpoint(root: Path = Path("runs")) -> Path:
    """The most recently written ``best.safetensors`` (else ``last``) under ``runs/``."""
    found = sorted(root.glob("*/best.safetensors"), key=lambda p: p.stat().st_mtime)
    found = found or sorted(root.glob("*/last.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoint given and none found under '{root}/*/'; pass a path, e.g. "
                        f"advtrain eval runs/NAME/best.safetensors --attack pgd50")
    return found[-1]


def _number(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        value = parse_number(text)
    except FractionError as err:
        raise UserError(f"{flag}: {err}") from None
    if not isinstance(value, float) or value < 0:
        raise UserError(f"{flag}: expected a non-negative number such as 8/255 or 0.5, got '{text}'")
    return check_flag(flag, value, EvalConfig, "alpha" if flag == "--alpha" else "eps")  # eval.eps's bounds


def load_model_from_checkpoint(path: Path, data_overrides: list[str],
                               device: torch.device) -> tuple[Any, Any, Any, Any]:
    """(checkpoint, recipe, data, model) with the checkpoint's weights loaded, in eval mode.

    The stored recipe, with the ``--data`` overrides, goes through the same validation pass as a
    recipe file (:func:`~advtrain.config.load.recipe_from_yaml_text`).
    """
    ckpt = ckpt_io.load(path)
    recipe = recipe_from_yaml_text(ckpt.recipe_yaml, source=f"{path} (stored recipe)", data_overrides=data_overrides)
    built = build.build_evaluation(recipe, ckpt, device)
    return ckpt, recipe, built.data, built.model


def _checkpoint_balls(recipe: Any) -> tuple[Any, Any, Any]:
    """(ℓp default, LPIPS default, training ball) from the checkpoint's stored recipe."""
    from advtrain.attacks.presets import checkpoint_balls

    objective, attack = recipe.components["objective"], recipe.components["attack"]
    return checkpoint_balls(objective.name if objective else None, attack.name if attack else None,
                            attack.params if attack else None, recipe.eval.eps)


def _trained_text(trained: Any) -> str:
    if trained is None:
        return "no ℓp or LPIPS ball (clean training)"
    return f"{trained.describe()} ({trained.source})"


def _ball_lines(attacks: list[Any], trained: Any) -> list[str]:
    """One line per distinct ball: what ε each attack uses, where it came from, and whether it is the training one."""
    seen: dict[tuple, list[str]] = {}
    for a in attacks:
        if a.family == "clean":
            continue
        text = a.eps_text or format_number(a.eps)
        seen.setdefault((a.norm, text, a.eps_source), []).append(a.name)
    lines = []
    symbols = {"linf": "ℓ∞", "l2": "ℓ2", "lpips": "LPIPS", "flow": "flow", "color": "colour"}
    for (norm, text, src), names in seen.items():
        attack = next(a for a in attacks if a.name == names[0])
        same = None if trained is None else (attack.norm == trained.norm and abs(attack.eps - trained.eps) < 1e-9)
        note = {None: "", True: " = the training ε", False: " — NOT the training ε"}[same]
        lines.append(f"ε: {symbols.get(norm or '', norm)} {text} from {src}{note} ({', '.join(names)})")
    return lines


def _external_source(card: dict[str, Any], device: torch.device) -> tuple[dict, str, Any, Any, tuple]:
    """(meta, dataset name, data, model, balls) of a model card: its stated threat model is the training ball."""
    from advtrain.attacks.presets import Ball
    from advtrain.commands.external_model import load_external
    from advtrain.ui import console

    ext = load_external(card, "the model card (--model-card and flags)", device)
    ball = Ball(ext.norm, ext.eps, "the stated threat model: --threat / model card", ext.eps_text)
    console.info(f"normalisation inside the model: {ext.normalisation}")
    return ext.meta, ext.dataset, ext.data, ext.model, (ball, None, ball)


def run_eval(checkpoint: Path | None, names: list[str], *, n_examples: int, batch_size: int,
             eps: str | None, alpha: str | None, steps: int | None, restarts: int | None,
             eps_sweep: str | None, split: str, data_overrides: list[str], out: Path | None,
             device: str | None, seed: int, threads: str | None = None,
             external: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate, write ``report.json``, ``report.md`` and ``robust_vs_eps.png``, print a table.

    ``external``: a model card (:mod:`advtrain.commands.external_model`) for weights advtrain did not
    train; ``checkpoint`` is then the weights file.
    """
    from advtrain.attacks.presets import resolve_eval_attack, resolve_eval_attacks
    from advtrain.ui import console

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'")
    eps_value, alpha_value = _number(eps, "--eps"), _number(alpha, "--alpha")
    overrides = {"eps": eps_value, "alpha": alpha_value, "steps": steps, "restarts": restarts,
                 "eps_text": eps.strip() if eps else None, "eps_source": "--eps"}
    resolve_eval_attacks(names, **overrides)  # unknown names fail before loading
    sweep_values = [(s.strip(), _number(s.strip(), "--eps-sweep")) for s in eps_sweep.split(",")] \
        if eps_sweep else []
    if external is not None:
        from advtrain.commands.external_model import card_weights

        path = card_weights(external)
    else:
        path = checkpoint or newest_checkpoint()
    out_dir = claim_output_dir(out or path.parent / "eval", command="eval", files=EVAL_FILES, create=False)
    dev = pick_device(device or "auto")
    thread_choice = setup_threads(threads)
    seed_everything(seed)
    if external is None:
        ckpt, recipe, data, model = load_model_from_checkpoint(path, data_overrides, dev)
        lp_default, lpips_default, trained = _checkpoint_balls(recipe)
        meta, dataset = ckpt.meta, recipe.components["data"].name
    else:
        meta, dataset, data, model, (lp_default, lpips_default, trained) = _external_source(external, dev)
    attacks = resolve_eval_attacks(names, **overrides, default=lp_default, lpips_default=lpips_default)
    source = data.test if split == "test" else data.val
    if len(source) == 0:
        raise UserError(f"the {split} split of dataset '{dataset}' is empty")
    when = f"epoch {meta.get('epoch', 0) + 1}" if "epoch" in meta else "external weights"
    console.info(f"evaluating {path} ({model.model_name}, {when}) on "
                 f"{min(n_examples, len(source))} {split} examples, {dev}, fp32, {thread_choice.describe()}")
    console.info(f"trained against: {_trained_text(trained)}")
    for line in _ball_lines(attacks, trained):
        console.info(line)
    start = time.perf_counter()
    kwargs = dict(n_examples=n_examples, batch_size=batch_size, device=dev, num_classes=data.num_classes)
    with console.EvalProgress() as progress:
        result = evaluate(model, source, attacks, **kwargs, progress=progress)
        record = eval_record(result, attacks, trained=trained)
        sweep_rows = []
        if sweep_values:
            base = next((a for a in attacks if a.family in ("pgd", "cw")), None) or \
                resolve_eval_attack("pgd50", default=lp_default)
            for text, value in sweep_values:
                attack = resolve_eval_attack(base.name, eps=value, alpha=alpha_value, steps=steps, restarts=restarts,
                                             norm=base.norm, eps_text=text, eps_source="--eps-sweep")
                res = evaluate(model, source, [attack], **kwargs, progress=progress)
                acc = res.clean_acc if value == 0 else res.attacks[0].robust_acc
                sweep_rows.append({"eps": text, "eps_float": value, "attack": base.name, "norm": attack.norm,
                                   "robust_acc": acc})
    if not sweep_values:  # one point per measured ℓp attack of the first attack's norm, clean at ε = 0
        lp_rows = [r for r in record["attacks"] if r["family"] in ("fgsm", "pgd", "cw")]
        norm = lp_rows[0]["norm"] if lp_rows else "linf"
        sweep_rows.append({"eps": "0", "eps_float": 0.0, "attack": "measured", "norm": norm,
                           "robust_acc": result.clean_acc})
        for row in lp_rows:
            if row["norm"] == norm:
                sweep_rows.append({"eps": row["eps"], "eps_float": row["eps_float"], "attack": row["name"],
                                   "norm": norm, "robust_acc": row["robust_acc"]})
    measured = [a for a in attacks if a.family != "clean"]
    first = next((a for a in measured if a.norm in ("linf", "l2")), measured[0] if measured else None)
    report = {
        "model": model.model_name, "checkpoint": str(path), "checkpoint_kind": meta.get("kind"),
        "epoch": meta.get("epoch", 0) + 1 if "epoch" in meta else None, "dataset": dataset, "split": split,
        "threat_model": threat_model(attacks),
        "training_threat_model": _trained_text(trained) if trained else None,
        "eps": (first.eps_text or format_number(first.eps)) if first else None,
        "eps_float": first.eps if first else None,
        "eps_source": first.eps_source if first else None,
        **record,
        "eps_sweep": sweep_rows if sweep_values else [],
        "total_time_s": time.perf_counter() - start, "device": str(dev), "seed": seed,
        "advtrain_version": __version__,
    }
    report["warnings"] = masking_warnings(report)
    claim_output_dir(out_dir, command="eval", files=EVAL_FILES)  # checked before the work, created now
    write_json(out_dir / "report.json", report, inside=out_dir)
    write_text(out_dir / "report.md", eval_markdown(report), inside=out_dir)
    plot_eps_sweep(out_dir / "robust_vs_eps.png", sweep_rows)
    rows = [("clean", "no attack", f"{result.clean_acc:.1%}", "")]
    for r in record["attacks"]:
        if r["name"] == "clean":
            continue
        rows.append((r["name"], r["description"], f"{r['robust_acc']:.1%}", f"{r['seconds']:.1f}s"))
        rows += [(f"  after {stage}", "" if i else "each stage attacks only the points still robust",
                  f"{acc:.1%}", "") for i, (stage, acc) in enumerate((r.get("stage_acc") or {}).items())]
    if result.union_acc is not None and len(record["robust_acc"]) > 1:
        rows.append(("union", "correct under every attack", f"{result.union_acc:.1%}", ""))
    rows += [(f"union of {group}", f"correct under every {group} attack", f"{acc:.1%}", "")
             for group, acc in result.group_union_acc.items()]
    console.print_table(f"{model.model_name} · {report['dataset']} {split} · n={result.n_examples}",
                        ["attack", "description", "accuracy", "time"], rows)
    if sweep_values:
        console.print_table("robust accuracy vs ε", ["ε", "accuracy"],
                            [(r["eps"], f"{r['robust_acc']:.1%}") for r in sweep_rows])
    for warning in report["warnings"]:
        console.warn(warning)
    console.info(f"wrote {out_dir}/report.json, report.md, robust_vs_eps.png")
    return report
