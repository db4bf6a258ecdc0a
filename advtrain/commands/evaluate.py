"""``advtrain eval``: rebuild model and data from a checkpoint's own recipe and attack it.

The command reads top-down: check the options (:func:`eval_options`), load what is evaluated
(:func:`checkpoint_subject`: a :class:`Subject`, the one thing another model source must produce),
resolve the attacks against the subject's own threat model, measure, build the typed report, write
it to a folder of its own (earlier reports are never replaced) and print it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain import __version__, build
from advtrain.attacks.budget import RESTARTS, STEPS
from advtrain.attacks.eval_attack import EvalAttack
from advtrain.attacks.presets import Ball, checkpoint_balls, resolve_eval_attack, resolve_eval_attacks
from advtrain.config.load import recipe_from_yaml_text
from advtrain.config.schema import EvalConfig
from advtrain.errors import DataError, UserError
from advtrain.eval.robust import EvalResult, Progress, evaluate
from advtrain.io import checkpoint as ckpt_io
from advtrain.io.files import write_text
from advtrain.io.outputs import claim_output_dir
from advtrain.io.run_files import write_json
from advtrain.params import FractionError, parse_number
from advtrain.params.check import check_flag
from advtrain.reports.evaluation import (
    MARKDOWN_FILE,
    PLOT_FILE,
    REPORT_FILE,
    EvaluationRecord,
    EvaluationReport,
    SweepPoint,
    build_record,
    eval_markdown,
    masking_warnings,
    plot_eps_sweep,
    threat_model,
)
from advtrain.runtime.device import pick_device
from advtrain.runtime.seeding import seed_everything
from advtrain.runtime.threads import setup_threads

#: Where a run's evaluations go: one folder per evaluation under ``<run>/eval/``.
EVAL_FOLDER = "eval"
#: Report folder names are cut to this many characters (before a ``-2``, ``-3`` suffix).
LABEL_LENGTH = 80
#: What one evaluation writes into its report folder.
EVAL_FILES = (REPORT_FILE, MARKDOWN_FILE, PLOT_FILE)


def newest_checkpoint(root: Path = Path("runs")) -> Path:
    """The most recently written ``best.safetensors`` (else ``last``) under ``runs/``."""
    found = sorted(root.glob("*/best.safetensors"), key=lambda p: p.stat().st_mtime)
    found = found or sorted(root.glob("*/last.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoint given and none found under '{root}/*/'; pass a path, e.g. "
                        f"advtrain eval runs/NAME/best.safetensors --attack pgd50")
    return found[-1]


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class EvalOptions:
    """What the command line asked for, checked before anything is loaded."""

    names: list[str]
    n_examples: int
    batch_size: int
    overrides: dict[str, Any]
    sweep: list[tuple[str, float]]
    split: str
    data_overrides: list[str]
    out: Path | None
    device: str | None
    seed: int
    threads: str | None = None


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


def eval_options(names: list[str], *, n_examples: int, batch_size: int, eps: str | None, alpha: str | None,
                 steps: int | None, restarts: int | None, eps_sweep: str | None, split: str,
                 data_overrides: list[str], out: Path | None, device: str | None, seed: int,
                 threads: str | None = None) -> EvalOptions:
    """The options, checked: flags by the same budget bounds as names and recipes; every name resolves."""
    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'")
    if steps is not None:
        STEPS.check(steps, "--steps")
    if restarts is not None:
        RESTARTS.check(restarts, "--restarts")
    overrides = {"eps": _number(eps, "--eps"), "alpha": _number(alpha, "--alpha"), "steps": steps,
                 "restarts": restarts, "eps_text": eps.strip() if eps else None, "eps_source": "--eps"}
    resolve_eval_attacks(names, **overrides)  # unknown names and budgets fail before loading
    sweep = [(s.strip(), _number(s.strip(), "--eps-sweep") or 0.0) for s in eps_sweep.split(",")] if eps_sweep else []
    return EvalOptions(list(names), n_examples, batch_size, overrides, sweep, split, list(data_overrides), out,
                       device, seed, threads)


# ------------------------------------------------------------------------------------------- subject
@dataclass
class Subject:
    """What is evaluated and what the report says about it.

    A checkpoint advtrain wrote gives one (:func:`checkpoint_subject`), a model advtrain did not
    train another (:func:`external_subject`: its stated threat model as the balls, epoch None).
    """

    model: nn.Module
    model_name: str
    origin: str
    kind: str | None
    epoch: int | None
    dataset: str
    data: Any
    lp_default: Ball | None
    lpips_default: Ball | None
    trained: Ball | None
    reports_root: Path
    device: torch.device


def run_origin(checkpoint: Path, output_dir: object) -> Path | None:
    """The folder a run was made from: the run folder less its relative ``output.dir``, when that still fits.

    ``runs/tiny`` stored and the checkpoint in ``/home/u/proj/runs/tiny/`` give ``/home/u/proj``. An
    absolute ``output.dir``, one with ``..`` or ``~``, or a run folder that was moved or renamed
    gives None (nothing is guessed).
    """
    if not isinstance(output_dir, str) or not output_dir or "~" in output_dir or "\0" in output_dir:
        return None
    written = Path(output_dir)
    parts = [part for part in written.parts if part != "."]
    if written.is_absolute() or ".." in parts or not parts:
        return None
    folder = checkpoint.resolve().parent
    for part in reversed(parts):
        if folder.name != part:
            return None
        folder = folder.parent
    return folder


def _path_keys(dataset: object) -> list[str]:
    """The data params of ``dataset`` that name files or folders (``path=True`` in their declaration)."""
    from advtrain.data import DATASETS

    if not isinstance(dataset, str) or dataset not in DATASETS:
        return []
    params = DATASETS.get(dataset).params
    if params is None:
        return []
    return [f.name for f in dataclasses.fields(params) if f.metadata.get("path")]


def _relative_paths(stored: dict[str, Any]) -> dict[str, str]:
    """``{key: value}`` of the stored data section's relative file and folder paths."""
    data = stored.get("data")
    if not isinstance(data, dict):
        return {}
    return {key: value for key in _path_keys(data.get("name")) if isinstance(value := data.get(key), str)
            and value and not value.startswith("~") and "\0" not in value and not Path(value).is_absolute()}


class DataRelocation:
    """A hook for the stored recipe: its relative data paths, resolved from the folder the run was made in.

    Data paths in a recipe are relative to where ``advtrain run`` was started; ``advtrain eval`` may
    run elsewhere. Where that folder follows from the checkpoint's place (:func:`run_origin`) and
    the path exists from there, the path is made absolute; otherwise it is left as written (relative
    to this folder) and :meth:`hint` says how to point at the data (``--data path=...``).
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.origin: Path | None = None
        self.relative: dict[str, str] = {}

    def __call__(self, stored: dict[str, Any]) -> dict[str, Any]:
        output = stored.get("output")
        self.origin = run_origin(self.checkpoint, output.get("dir") if isinstance(output, dict) else None)
        self.relative = _relative_paths(stored)
        if self.origin is None:
            return stored
        moved = {key: str(self.origin / value) for key, value in self.relative.items()
                 if (self.origin / value).exists()}
        return {**stored, "data": {**stored["data"], **moved}} if moved else stored

    def hint(self, err: DataError) -> DataError:
        """``err`` with the way out when a relative data path of the stored recipe was not found."""
        if not self.relative:
            return err
        keys = ", ".join(f"data.{k}='{v}'" for k, v in self.relative.items())
        where = (f"the folder the run was made in ({self.origin}) does not hold it either" if self.origin else
                 f"the folder the run was made in cannot be told from {self.checkpoint} (the run folder was "
                 f"moved, or its output.dir is absolute)")
        return DataError(f"{err}\nThe checkpoint's recipe gives {keys}, relative to the folder its run was made "
                         f"in; {where}, and it does not exist from here ({Path.cwd()}). Point at the data: "
                         f"advtrain eval {self.checkpoint} --data {next(iter(self.relative))}=/path/to/it")


def checkpoint_subject(path: Path, data_overrides: list[str], device: torch.device) -> Subject:
    """A checkpoint advtrain wrote, its stored recipe validated like a recipe file, weights loaded, eval mode."""
    ckpt = ckpt_io.load(path)
    relocation = DataRelocation(path)
    try:
        recipe = recipe_from_yaml_text(ckpt.recipe_yaml, source=f"{path} (stored recipe)",
                                       data_overrides=data_overrides, relocate=relocation)
        built = build.build_evaluation(recipe, ckpt, device)
    except DataError as err:
        raise relocation.hint(err) from None
    objective, attack = recipe.components["objective"], recipe.components["attack"]
    lp, lpips, trained = checkpoint_balls(objective.name if objective else None, attack.name if attack else None,
                                          attack.params if attack else None, recipe.eval.eps)
    return Subject(built.model, built.model.model_name, str(path), ckpt.meta.get("kind"),
                   ckpt.meta.get("epoch", 0) + 1, recipe.components["data"].name, built.data, lp, lpips, trained,
                   path.parent / EVAL_FOLDER, device)


def load_model_from_checkpoint(path: Path, data_overrides: list[str],
                               device: torch.device) -> tuple[Any, Any, Any, Any]:
    """(checkpoint, recipe, data, model) with the checkpoint's weights loaded, in eval mode (for the Python API)."""
    ckpt = ckpt_io.load(path)
    recipe = recipe_from_yaml_text(ckpt.recipe_yaml, source=f"{path} (stored recipe)", data_overrides=data_overrides,
                                   relocate=DataRelocation(path))
    built = build.build_evaluation(recipe, ckpt, device)
    return ckpt, recipe, built.data, built.model


def external_subject(card: dict[str, Any], device: torch.device) -> Subject:
    """Weights advtrain did not train, described by a model card (:mod:`advtrain.commands.external_model`).

    Its stated threat model is both the default ball and the training ball; reports go to ``eval/``
    beside the weights file.
    """
    from advtrain.commands.external_model import card_weights, load_external
    from advtrain.ui import console

    path = card_weights(card)
    ext = load_external(card, "the model card (--model-card and flags)", device)
    ball = Ball(ext.norm, ext.eps, "the stated threat model: --threat / model card", ext.eps_text)
    console.info(f"normalisation inside the model: {ext.normalisation}")
    return Subject(ext.model, ext.model.model_name, str(path), ext.meta.get("kind"), None, ext.dataset, ext.data,
                   ball, None, ball, path.parent / EVAL_FOLDER, device)


# ------------------------------------------------------------------------------------------- measuring
def _trained_text(trained: Ball | None) -> str:
    if trained is None:
        return "no ℓp or LPIPS ball (clean training)"
    return f"{trained.describe()} ({trained.source})"


def _ball_lines(attacks: list[EvalAttack], trained: Ball | None) -> list[str]:
    """One line per distinct ball: what ε each attack uses, where it came from, and whether it is the training one."""
    seen: dict[tuple, list[EvalAttack]] = {}
    for a in attacks:
        seen.setdefault((a.threat().metric, a.threat().written(), a.eps_source), []).append(a)
    training = trained.threat() if trained is not None else None
    lines = []
    for (_, _, source), group in seen.items():
        threat = group[0].threat()
        note = "" if training is None else (" = the training ε" if threat.same_ball(training) else
                                            " — NOT the training ε")
        lines.append(f"ε: {threat.describe().replace(' ε=', ' ')} from {source}{note} "
                     f"({', '.join(a.name for a in group)})")
    return lines


def _split(subject: Subject, split: str) -> Any:
    source = subject.data.test if split == "test" else subject.data.val
    if len(source) == 0:
        raise UserError(f"the {split} split of dataset '{subject.dataset}' is empty")
    return source


def _sweep(subject: Subject, source: Any, attacks: list[EvalAttack], options: EvalOptions,
           progress: Progress) -> list[SweepPoint]:
    """Robust accuracy at each ``--eps-sweep`` value, with the first PGD/CW attack (else PGD-50)."""
    base = next((a for a in attacks if a.family in ("pgd", "cw")), None) or \
        resolve_eval_attack("pgd50", default=subject.lp_default)
    points = []
    for text, value in options.sweep:
        attack = resolve_eval_attack(base.name, eps=value, alpha=options.overrides["alpha"],
                                     steps=options.overrides["steps"], restarts=options.overrides["restarts"],
                                     norm=base.norm, eps_text=text, eps_source="--eps-sweep")
        res = _evaluate(subject, source, [attack], options, progress)
        acc = res.clean_acc if value == 0 else res.attacks[0].robust_acc
        points.append(SweepPoint(text, value, base.name, attack.threat().metric, acc))
    return points


def _measured_curve(record: EvaluationRecord) -> list[SweepPoint]:
    """Without ``--eps-sweep``: clean at ε = 0, then each measured ℓp attack of the first one's norm."""
    rows = [r for r in record.attacks if r.family in ("fgsm", "pgd", "cw")]
    norm = rows[0].norm if rows else "linf"
    return [SweepPoint("0", 0.0, "measured", norm, record.clean_acc)] + \
        [SweepPoint(r.eps, r.eps_float, r.name, norm, r.robust_acc) for r in rows if r.norm == norm]


def _evaluate(subject: Subject, source: Any, attacks: list[EvalAttack], options: EvalOptions,
              progress: Progress) -> EvalResult:
    return evaluate(subject.model, source, attacks, n_examples=options.n_examples, batch_size=options.batch_size,
                    device=subject.device, num_classes=subject.data.num_classes, progress=progress)


def build_report(subject: Subject, attacks: list[EvalAttack], record: EvaluationRecord, sweep: list[SweepPoint],
                 options: EvalOptions, seconds: float) -> EvaluationReport:
    """The typed report: the subject, the first ℓp attack's ball, the record, the curve and the warnings."""
    first = next((a for a in attacks if a.threat().is_lp), attacks[0] if attacks else None)
    threat = first.threat() if first else None
    report = EvaluationReport(
        subject.model_name, subject.origin, subject.kind, subject.epoch, subject.dataset, options.split,
        threat_model(attacks), _trained_text(subject.trained) if subject.trained else None,
        threat.written() if threat else None, threat.bound if threat else None, first.eps_source if first else None,
        record, sweep, seconds, str(subject.device), options.seed, __version__)
    report.warnings = masking_warnings(record)
    return report


# ------------------------------------------------------------------------------------------- writing
def report_label(report: EvaluationReport, attacks: list[EvalAttack], options: EvalOptions) -> str:
    """A file-name-safe name for one evaluation: its attacks and ε (``pgd20+aa_eps8-255``), split and sweep."""
    names: list[str] = []
    for attack in attacks:
        name = attack.group or attack.name
        if name not in names:
            names.append(name)
    parts = ["+".join(names) or "clean"]
    if report.eps is not None:
        parts.append(f"eps{report.eps}")
    if options.sweep:
        parts.append("sweep")
    if options.split != "test":
        parts.append(options.split)
    label = re.sub(r"[^a-z0-9.@+_-]", "-", "_".join(parts).lower())
    return label[:LABEL_LENGTH].strip(".-") or "eval"


def new_report_folder(root: Path, label: str) -> Path:
    """``root/label``, else ``root/label-2``, ``-3``, ...: created here, so no earlier report is ever replaced."""
    if root.is_symlink():
        raise UserError(f"'{root}' is a symbolic link; advtrain writes evaluation reports only into a real folder "
                        f"of the run. Remove the link, or pass --out FOLDER.")
    root.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10_000):
        folder = root / (label if number == 1 else f"{label}-{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise UserError(f"{root} already holds 9,999 evaluations named '{label}'; pass --out FOLDER")


def write_report(report: EvaluationReport, folder: Path) -> None:
    """``report.json``, ``report.md`` and ``robust_vs_eps.png`` in ``folder``, each written whole."""
    write_json(folder / REPORT_FILE, report.to_json(), inside=folder)
    write_text(folder / MARKDOWN_FILE, eval_markdown(report), inside=folder)
    plot_eps_sweep(folder / PLOT_FILE, report.eps_sweep or _measured_curve(report.record))


# ------------------------------------------------------------------------------------------- printing
def _announce(subject: Subject, attacks: list[EvalAttack], n: int, options: EvalOptions, threads: str) -> None:
    from advtrain.ui import console

    when = "external weights" if subject.epoch is None else f"epoch {subject.epoch}"
    console.info(f"evaluating {subject.origin} ({subject.model_name}, {when}) on "
                 f"{n} {options.split} examples, {subject.device}, fp32, {threads}")
    console.info(f"trained against: {_trained_text(subject.trained)}")
    for line in _ball_lines(attacks, subject.trained):
        console.info(line)


def _show(report: EvaluationReport, folder: Path, kept: bool) -> None:
    from advtrain.ui import console

    record = report.record
    rows = [("clean", "no attack", f"{record.clean_acc:.1%}", "")]
    for r in record.attacks:
        rows.append((r.name, r.description, f"{r.robust_acc:.1%}", f"{r.seconds:.1f}s"))
        rows += [(f"  after {stage}", "" if i else "each stage attacks only the points still robust",
                  f"{acc:.1%}", "") for i, (stage, acc) in enumerate((r.stage_acc or {}).items())]
    if record.union_acc is not None and len(record.attacks) > 1:
        rows.append(("union", "correct under every attack", f"{record.union_acc:.1%}", ""))
    rows += [(f"union of {group}", f"correct under every {group} attack", f"{acc:.1%}", "")
             for group, acc in record.union_acc_by_group.items()]
    console.print_table(f"{report.model} · {report.dataset} {report.split} · n={record.n_examples}",
                        ["attack", "description", "accuracy", "time"], rows)
    if report.eps_sweep:
        console.print_table("robust accuracy vs ε", ["ε", "accuracy"],
                            [(p.eps, f"{p.robust_acc:.1%}") for p in report.eps_sweep])
    for warning in report.warnings:
        console.warn(warning)
    note = " (a new folder: earlier evaluations are kept beside it)" if kept else ""
    console.info(f"wrote {folder}/{REPORT_FILE}, {MARKDOWN_FILE}, {PLOT_FILE}{note}")


# ------------------------------------------------------------------------------------------- the command
def evaluate_subject(subject: Subject, options: EvalOptions, *, threads: str = "") -> EvaluationReport:
    """Attack ``subject`` as ``options`` say, write its report to a folder of its own, print it."""
    from advtrain.ui import console

    attacks = resolve_eval_attacks(options.names, **options.overrides, default=subject.lp_default,
                                   lpips_default=subject.lpips_default)
    if options.out is not None:  # refused before the work, created once there are results
        claim_output_dir(options.out, command="eval", files=EVAL_FILES, create=False)
    source = _split(subject, options.split)
    _announce(subject, attacks, min(options.n_examples, len(source)), options, threads)
    start = time.perf_counter()
    with console.EvalProgress() as progress:
        record = build_record(_evaluate(subject, source, attacks, options, progress), attacks,
                              trained=subject.trained.threat() if subject.trained else None)
        sweep = _sweep(subject, source, attacks, options, progress) if options.sweep else []
    report = build_report(subject, attacks, record, sweep, options, time.perf_counter() - start)
    if options.out is not None:
        folder = claim_output_dir(options.out, command="eval", files=EVAL_FILES)
    else:
        folder = new_report_folder(subject.reports_root, report_label(report, attacks, options))
    write_report(report, folder)
    _show(report, folder, kept=options.out is None)
    return report


def run_eval(checkpoint: Path | None, names: list[str], *, n_examples: int, batch_size: int,
             eps: str | None, alpha: str | None, steps: int | None, restarts: int | None,
             eps_sweep: str | None, split: str, data_overrides: list[str], out: Path | None,
             device: str | None, seed: int, threads: str | None = None,
             external: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate; write ``<run>/eval/<attacks>_eps<ε>/report.{json,md}`` and the plot; print a table.

    ``external``: a model card (:mod:`advtrain.commands.external_model`) for weights advtrain did not
    train; ``checkpoint`` is then the weights file (named by the card).
    """
    options = eval_options(names, n_examples=n_examples, batch_size=batch_size, eps=eps, alpha=alpha, steps=steps,
                           restarts=restarts, eps_sweep=eps_sweep, split=split, data_overrides=data_overrides,
                           out=out, device=device, seed=seed, threads=threads)
    dev = pick_device(options.device or "auto")
    thread_choice = setup_threads(options.threads)
    seed_everything(options.seed)
    if external is not None:
        subject = external_subject(external, dev)
    else:
        subject = checkpoint_subject(checkpoint or newest_checkpoint(), options.data_overrides, dev)
    return evaluate_subject(subject, options, threads=thread_choice.describe()).to_json()
