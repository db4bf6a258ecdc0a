"""``advtrain eval``: rebuild model and data from a checkpoint's own recipe and attack it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from advtrain import __version__
from advtrain.config.load import apply_overrides, recipe_from_yaml_text, validate
from advtrain.config.params import FractionError, parse_number
from advtrain.errors import UserError
from advtrain.eval.report import (
    _fraction,
    eval_markdown,
    eval_record,
    masking_warnings,
    plot_eps_sweep,
    threat_model,
    write_json,
)
from advtrain.eval.robust import evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.train import setup as build
from advtrain.train.device import pick_device, seed_everything


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
    return value


def load_model_from_checkpoint(path: Path, data_overrides: list[str],
                               device: torch.device) -> tuple[Any, Any, Any, Any]:
    """(checkpoint, recipe, data, model) with the checkpoint's weights loaded, in eval mode."""
    ckpt = ckpt_io.load(path)
    recipe = recipe_from_yaml_text(ckpt.recipe_yaml, source=f"{path} (stored recipe)")
    if data_overrides:
        extra = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
        recipe = validate(apply_overrides(recipe.resolved, extra), source=f"{path} (stored recipe + --data)",
                          interpolate=False)
    data = build.build_data(recipe)
    model = build.build_model_for(recipe, data, weights_from_checkpoint=True)
    ckpt_io.load_model_weights(ckpt, model)
    return ckpt, recipe, data, model.to(device).eval()


def run_eval(checkpoint: Path | None, names: list[str], *, n_examples: int, batch_size: int,
             eps: str | None, alpha: str | None, steps: int | None, restarts: int | None,
             eps_sweep: str | None, split: str, data_overrides: list[str], out: Path | None,
             device: str | None, seed: int) -> dict[str, Any]:
    """Evaluate, write ``report.json``, ``report.md`` and ``robust_vs_eps.png``, print a table."""
    from advtrain.attacks.presets import LP_FAMILIES, resolve_eval_attack, resolve_eval_attacks
    from advtrain.ui import console

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'")
    eps_value, alpha_value = _number(eps, "--eps"), _number(alpha, "--alpha")
    overrides = {"eps": eps_value, "alpha": alpha_value, "steps": steps, "restarts": restarts}
    attacks = resolve_eval_attacks(names, **overrides)  # unknown names fail before loading
    sweep_values = [(s.strip(), _number(s.strip(), "--eps-sweep")) for s in eps_sweep.split(",")] \
        if eps_sweep else []
    path = checkpoint or newest_checkpoint()
    dev = pick_device(device or "auto")
    seed_everything(seed)
    ckpt, recipe, data, model = load_model_from_checkpoint(path, data_overrides, dev)
    source = data.test if split == "test" else data.val
    if len(source) == 0:
        raise UserError(f"the {split} split of dataset '{recipe.components['data'].name}' is empty")
    console.info(f"evaluating {path} ({model.model_name}, epoch {ckpt.meta.get('epoch', 0) + 1}) on "
                 f"{min(n_examples, len(source))} {split} examples, {dev}, fp32")
    start = time.perf_counter()
    kwargs = dict(n_examples=n_examples, batch_size=batch_size, device=dev, num_classes=data.num_classes)
    result = evaluate(model, source, attacks, **kwargs)
    record = eval_record(result, attacks, eps_written={a.name: a.eps_text or eps for a in attacks
                                                        if a.eps_text or (eps and a.family in LP_FAMILIES)})
    sweep_rows = []
    if sweep_values:
        base = next((a for a in attacks if a.family in ("pgd", "cw")), None) or resolve_eval_attack("pgd50")
        for text, value in sweep_values:
            attack = resolve_eval_attack(base.name, eps=value, alpha=alpha_value, steps=steps, restarts=restarts)
            res = evaluate(model, source, [attack], **kwargs)
            acc = res.clean_acc if value == 0 else res.attacks[0].robust_acc
            sweep_rows.append({"eps": text, "eps_float": value, "attack": base.name, "norm": attack.norm,
                               "robust_acc": acc})
    else:  # one point per measured attack, clean at ε = 0
        sweep_rows.append({"eps": "0", "eps_float": 0.0, "attack": "measured", "norm": "linf",
                           "robust_acc": result.clean_acc})
        for row in record["attacks"]:
            if row["family"] not in ("clean", "aa") and row["norm"] == "linf":
                sweep_rows.append({"eps": row["eps"], "eps_float": row["eps_float"], "attack": row["name"],
                                   "norm": "linf", "robust_acc": row["robust_acc"]})
    report = {
        "model": model.model_name, "checkpoint": str(path), "checkpoint_kind": ckpt.meta.get("kind"),
        "epoch": ckpt.meta.get("epoch", 0) + 1, "dataset": recipe.components["data"].name, "split": split,
        "threat_model": threat_model(attacks),
        "eps": eps or (_fraction(attacks[0].eps) if attacks else None),
        "eps_float": eps_value if eps_value is not None else (attacks[0].eps if attacks else None),
        **record,
        "eps_sweep": sweep_rows if sweep_values else [],
        "total_time_s": time.perf_counter() - start, "device": str(dev), "seed": seed,
        "advtrain_version": __version__,
    }
    report["warnings"] = masking_warnings(report)
    out_dir = out or path.parent / "eval"
    write_json(out_dir / "report.json", report)
    text = eval_markdown(report)
    ckpt_io.write_atomically(out_dir / "report.md", lambda tmp: tmp.write_text(text))
    plot_eps_sweep(out_dir / "robust_vs_eps.png", sweep_rows)
    rows = [("clean", "no attack", f"{result.clean_acc:.2%}", "")]
    rows += [(r["name"], r["description"], f"{r['robust_acc']:.2%}", f"{r['seconds']:.1f}s")
             for r in record["attacks"] if r["name"] != "clean"]
    if result.union_acc is not None and len(rows) > 2:
        rows.append(("union", "correct under every attack", f"{result.union_acc:.2%}", ""))
    rows += [(f"union of {group}", f"correct under every {group} attack", f"{acc:.2%}", "")
             for group, acc in result.group_union_acc.items()]
    console.print_table(f"{model.model_name} · {report['dataset']} {split} · n={result.n_examples}",
                        ["attack", "description", "accuracy", "time"], rows)
    if sweep_values:
        console.print_table("robust accuracy vs ε", ["ε", "accuracy"],
                            [(r["eps"], f"{r['robust_acc']:.2%}") for r in sweep_rows])
    for warning in report["warnings"]:
        console.warn(warning)
    console.info(f"wrote {out_dir}/report.json, report.md, robust_vs_eps.png")
    return report
