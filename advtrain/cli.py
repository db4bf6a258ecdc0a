"""The ``advtrain`` command line: run, eval, select, compare, validate, list.

Every command validates its recipe before building anything; a :class:`UserError` becomes one
red panel and exit code 2 (no traceback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import typer.core

from advtrain.errors import UserError

#: click's base error (typer vendors click in newer versions, so found through a class typer exports).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _SafeGroup(typer.core.TyperGroup):
    """click's own usage errors quote the argument as typed: escape its control characters before printing."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _CLICK_ERROR as err:
            raise _escaped(err) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CLICK_ERROR as err:
            raise _escaped(err) from None


def _escaped(err: Exception) -> Exception:
    from advtrain.ui.console import safe_text

    err.message = safe_text(err.message)
    return err


app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, cls=_SafeGroup,
                  help="Efficient adversarial training with adversarial coreset selection.")

LIST_KINDS = ("models", "datasets", "objectives", "attacks", "selectors", "optimizers", "lr_schedules",
              "recipes")
_options = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from advtrain import __version__

        typer.echo(f"advtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="with an error, also print the Python traceback"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Efficient adversarial training with adversarial coreset selection.

    Results go to stdout, errors, warnings and status lines to stderr. Shell completion:
    advtrain --install-completion (bash, zsh, fish, PowerShell).
    """
    _options["debug"] = debug


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into a readable panel and exit code 2 (signals: their message and 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from advtrain.runtime.interrupts import CommandInterrupted
        from advtrain.train.stops import TrainingInterrupted
        from advtrain.ui import console

        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if _options["debug"]:
                console.print_traceback(err)
            console.print_error(err.title, str(err))
            raise typer.Exit(2) from None
        except CommandInterrupted as err:
            console.print_error("interrupted", str(err))
            raise typer.Exit(130) from None
        except TrainingInterrupted as err:
            console.print_error("interrupted", str(err))
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            console.print_error("interrupted", "stopped by the user; the last completed epoch's "
                                "checkpoint is kept (continue with --resume).")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def validate(
    recipe: str = typer.Argument(..., help="recipe .yaml path or shipped recipe name"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides"),
) -> None:
    """Validate a recipe (with overrides) against its data and print it fully resolved, or every error at once."""
    from advtrain.config.load import load_recipe
    from advtrain.ui import console

    resolved = load_recipe(recipe, overrides or [])
    console.print_text(resolved.to_yaml())  # stdout: `advtrain validate R > resolved.yaml` is a recipe
    console.status(f"ok: {resolved.source} is valid", style="green")


@app.command()
@user_errors
def run(
    recipe: str = typer.Argument(..., help="recipe .yaml path or shipped recipe name"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. schedule.epochs=5"),
    resume: bool = typer.Option(False, "--resume", help="continue from output.dir/last.safetensors"),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="continue from this checkpoint"),
    force: bool = typer.Option(False, "--force", help="resume even if the recipe differs"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start over in an output.dir that holds a run"),
    device: str | None = typer.Option(None, "--device", help="override the recipe's device"),
    threads: str | None = typer.Option(None, "--threads", help="CPU threads for torch: auto or N (default: "
                                       "runtime.threads, else OMP_NUM_THREADS, else from the CPUs this process "
                                       "may use)"),
) -> None:
    """Train with a recipe: adversarial training, optionally on adversarial coresets."""
    from advtrain.commands.train import run_training

    _refuse_conflicts({"--resume": resume, "--resume-from": resume_from is not None, "--overwrite": overwrite,
                       "--force": force})
    _check_device_flag(device)
    run_training(recipe, overrides or [], resume=resume, resume_from=resume_from, force=force, overwrite=overwrite,
                 device=device, threads=threads)


def _refuse_conflicts(flags: dict[str, bool]) -> None:
    """``advtrain run``'s flags that contradict each other: named, never one silently ignored."""
    given = {name for name, on in flags.items() if on}
    if {"--resume", "--resume-from"} <= given:
        raise UserError("--resume and --resume-from both name the checkpoint to continue; give one (--resume is "
                        "output.dir/last.safetensors).")
    if "--overwrite" in given and given & {"--resume", "--resume-from"}:
        other = sorted(given & {"--resume", "--resume-from"})[0]
        raise UserError(f"--overwrite (start over, removing the run in output.dir) contradicts {other} (continue "
                        f"it); give one of them.")
    if "--force" in given and not given & {"--resume", "--resume-from"}:
        raise UserError("--force only applies when resuming (it continues a checkpoint whose recipe differs); "
                        "add --resume or --resume-from, or drop --force.")


def _check_device_flag(device: str | None) -> None:
    """``--device`` takes the names the recipe's ``device`` key takes, checked before anything starts."""
    if device is not None:
        from advtrain.runtime.device import device_name_problem

        problem = device_name_problem(device)
        if problem:
            raise UserError(f"--device: {problem} (the same names as the recipe key 'device').")


@app.command("eval")
@user_errors
def eval_cmd(
    checkpoint: Path | None = typer.Argument(None, help="checkpoint (default: newest runs/*/best.safetensors)"),
    attack: list[str] | None = typer.Option(None, "--attack", "-a", help="attack name, repeatable; "
                                               "comma lists allowed (clean,pgd50,aa,aa-l2@1,ppgd40,lpa40,"
                                               "stadv100,recolor100, group: unseen); see advtrain list attacks"),
    n_examples: int = typer.Option(1000, "--n-examples", min=1, max=10**8, help="first N examples of the split"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, max=65_536),
    eps: str | None = typer.Option(None, "--eps",
                                   help="ℓp ε, e.g. 4/255 (default: the checkpoint's own; LPIPS/flow/colour "
                                        "bounds: name@bound)"),
    alpha: str | None = typer.Option(None, "--alpha",
                                     help="step size, e.g. 1/255 (default: max(ε/4, 2.5·ε/steps))"),
    steps: int | None = typer.Option(None, "--steps",
                                     help="attack steps (1..10000, as in names); with aa a NON-STANDARD budget"),
    restarts: int | None = typer.Option(None, "--restarts", help="restarts (1..1000, as in names)"),
    eps_sweep: str | None = typer.Option(None, "--eps-sweep", help="comma list of ε, e.g. 0,2/255,4/255,8/255"),
    split: str = typer.Option("test", "--split", help="test or val"),
    data: list[str] | None = typer.Option(None, "--data", help="data.* override, e.g. --data path=c10.npz"),
    out: Path | None = typer.Option(None, "--out", help="report folder (default: a new <run>/eval/<attacks>_eps<ε>)"),
    device: str | None = typer.Option(None, "--device"),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="seed for random starts"),
    threads: str | None = typer.Option(None, "--threads", help="CPU threads for torch: auto or N (default: "
                                       "OMP_NUM_THREADS, else from the CPUs this process "
                                       "may use)"),
    arch: str | None = typer.Option(None, "--arch", help="evaluate weights advtrain did not train: CHECKPOINT is "
                                    "then a .safetensors state dict of timm:NAME or torchvision:NAME"),
    threat: str | None = typer.Option(None, "--threat", help="with --arch: the model's threat model NORM@EPS, "
                                      "e.g. linf@8/255 or l2@0.5"),
    mean: str | None = typer.Option(None, "--mean", help="with --arch: per-channel mean the model expects, "
                                    "e.g. 0.4914,0.4822,0.4465; 'none' (takes [0,1] as is) or 'dataset'"),
    std: str | None = typer.Option(None, "--std", help="with --arch: per-channel std ('none' or 'dataset' too)"),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1, max=100_000,
                                           help="with --arch: classes of the last layer (default: the data's)"),
    model_card: Path | None = typer.Option(None, "--model-card", help="YAML with model/threat/data sections for "
                                           "an external model (flags override it); see the README"),
    as_json: bool = typer.Option(False, "--json", help="print report.json to stdout (tables go to stderr)"),
) -> None:
    """Evaluate a checkpoint under standard attacks; write eval/<attacks>_eps<ε>/report.{json,md} and a plot."""
    from advtrain.commands.evaluate import run_eval
    from advtrain.runtime.interrupts import on_signals
    from advtrain.ui import console

    external = None
    if arch is not None or model_card is not None:
        from advtrain.commands.external_model import card_from_cli

        external = card_from_cli(model_card, weights=checkpoint, arch=arch, threat=threat, mean=mean, std=std,
                                 num_classes=num_classes, data_overrides=data or [])
    elif any(v is not None for v in (threat, mean, std, num_classes)):
        raise UserError("--threat, --mean, --std and --num-classes describe a model advtrain did not train: give "
                        "--arch timm:NAME (or torchvision:NAME) or --model-card too. An advtrain checkpoint "
                        "records all of them itself.")
    _check_device_flag(device)
    names = [n.strip() for a in (attack or ["pgd20"]) for n in a.split(",") if n.strip()]
    with console.output_to_stderr(as_json), on_signals(_eval_interrupted):
        report = run_eval(checkpoint, names, n_examples=n_examples, batch_size=batch_size, eps=eps, alpha=alpha,
                          steps=steps, restarts=restarts, eps_sweep=eps_sweep, split=split,
                          data_overrides=data or [], out=out, device=device, seed=seed, threads=threads,
                          external=external)
    if as_json:
        console.print_json(report)


def _eval_interrupted(sig: str) -> str:
    return (f"advtrain eval stopped by {sig} before it finished; the checkpoint is untouched and report files "
            f"are only ever replaced whole, so any earlier report is intact. Run the same command again to "
            f"evaluate.")


@app.command()
@user_errors
def select(
    recipe: str = typer.Argument(..., help="recipe .yaml path or shipped recipe name"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="model to score (default: fresh)"),
    dump_indices: bool = typer.Option(False, "--dump-indices", help="write indices/weights to --out"),
    out: Path = typer.Option(Path("coreset.npz"), "--out", help="output .npz"),
    device: str | None = typer.Option(None, "--device"),
    threads: str | None = typer.Option(None, "--threads", help="CPU threads for torch: auto or N (default: "
                                       "runtime.threads, else OMP_NUM_THREADS, else from the CPUs this process "
                                       "may use)"),
) -> None:
    """Run one adversarial coreset selection and (with --dump-indices) write it to a .npz."""
    from advtrain.commands.select import run_select
    from advtrain.runtime.interrupts import on_signals

    if not dump_indices:
        raise UserError("nothing to do: pass --dump-indices (and optionally --out FILE.npz) to write the "
                        "selected indices and weights.")
    _check_device_flag(device)
    with on_signals(lambda sig: f"advtrain select stopped by {sig} before it finished; nothing was written. "
                                f"Run the same command again to select."):
        run_select(recipe, overrides or [], checkpoint=checkpoint, out=out, device=device, threads=threads)


@app.command()
@user_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="finished run folders (recipe.yaml, metrics.jsonl, report.json)"),
    out: Path = typer.Option(Path("compare"), "--out", help="folder for compare.{md,json} and tradeoff.png"),
    attack: str | None = typer.Option(None, "--attack", help="robust metric (default: aa if every run has it, "
                                      "else the strongest attack all runs were evaluated with)"),
    as_json: bool = typer.Option(False, "--json", help="print compare.json to stdout instead of the table"),
) -> None:
    """Compare finished runs: robust accuracy vs training-loop speed-up, seeds grouped (paper Fig. 3)."""
    from advtrain.reports import compare as cmp
    from advtrain.ui import console

    with console.output_to_stderr(as_json):
        result = cmp.run_compare(runs, out, attack)
    for line in result["skipped"] + result["warnings"]:
        console.warn(line)
    if as_json:
        console.print_json(result)
    else:
        console.print_table(f"robust accuracy ({cmp.metric_title(result)}) vs speed-up", cmp.SUMMARY_COLUMNS,
                            cmp.summary_rows(result))
        for note in cmp.notes(result):
            console.status(f"–: {note}")
    console.status(f"wrote {out}/compare.md, compare.json, tradeoff.png")


@app.command("list")
@user_errors
def list_cmd(
    kind: str = typer.Argument(..., help=" | ".join(LIST_KINDS)),
    as_json: bool = typer.Option(False, "--json", help="print the entries as JSON to stdout"),
) -> None:
    """List registered components with their parameters and defaults."""
    from advtrain.errors import did_you_mean
    from advtrain.ui import console

    kind = kind.lower().replace("-", "_")
    aliases = {"schedules": "lr_schedules", "optim": "optimizers"}
    kind = aliases.get(kind, kind)
    if kind not in LIST_KINDS:
        raise UserError(f"unknown kind '{kind}'{did_you_mean(kind, LIST_KINDS)} (choices: {', '.join(LIST_KINDS)})")
    tables = _list_tables(kind)
    if as_json:
        console.print_json({"kind": kind, **{key: [dict(zip(columns, row, strict=True)) for row in rows]
                                             for key, (_, columns, rows) in tables.items()}})
        return
    for title, columns, rows in tables.values():
        console.print_table(title, [{"params": "params (defaults)"}.get(c, c.replace("_", " ")) for c in columns],
                            rows)
    if kind == "models":
        console.info("Any timm model name also works (e.g. model.name=resnet50); CIFAR-style models are "
                     "registered into timm by advtrain.")


def _list_tables(kind: str) -> dict[str, tuple[str, list[str], list[tuple[str, ...]]]]:
    """``advtrain list KIND`` as tables: key → (title, columns, rows); ``--json`` prints the rows by column."""
    if kind == "recipes":
        from advtrain.config.read import recipes_dir

        rows = []
        for path in sorted(recipes_dir().glob("*.yaml")):
            first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            rows.append((path.stem, first))
        return {"entries": ("recipes", ["name", "what_it_reproduces"], rows)}
    if kind == "attacks":
        from advtrain.attacks import ATTACKS
        from advtrain.attacks.presets import list_eval_presets

        return {"entries": ("training attacks (attack.name)", ["name", "what", "params"], _registry_rows(ATTACKS)),
                "eval_attacks": ("evaluation attacks (eval.attacks, advtrain eval --attack)", ["name", "what"],
                                 list_eval_presets())}
    from advtrain.config.sections import SECTION_REGISTRIES

    section = {"models": "model", "datasets": "data", "objectives": "objective", "selectors": "selector",
               "optimizers": "optim", "lr_schedules": "lr_schedule"}[kind]
    return {"entries": (kind, ["name", "what", "params"], _registry_rows(SECTION_REGISTRIES[section]))}


def _registry_rows(registry: Any) -> list[tuple[str, str, str]]:
    from advtrain.params import describe_fields

    rows = []
    for entry in registry.entries():
        params = ", ".join(f"{name}={default}" for name, default, _ in describe_fields(entry.params)) or "-"
        rows.append((entry.name, entry.summary, params))
    return rows


def main() -> None:
    """Console-script entry point."""
    import os

    from advtrain.runtime.threads import prefer_passive_wait

    prefer_passive_wait(os.environ)  # before torch loads OpenMP: idle threads sleep, not spin (issue 25)
    app()
