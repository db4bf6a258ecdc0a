"""The recipe schema: fixed sections as dataclasses, component sections as ``{name, params...}``.

Component sections (``data``, ``model``, ``objective``, ``attack``, ``selector``, ``optim``,
``lr_schedule``) name a registered component; their other keys are that component's params and
are checked against the component's own params dataclass (phase 2 of validation). The fixed
sections below are checked directly (phase 1).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from advtrain.params import param

#: A run name is one file-name-safe path component (no '/', no leading '.', at most 100 characters).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
#: Upper bounds shared by several sections: beyond them a value is a typo, not an experiment.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536

#: Component sections and the default component used when a recipe omits the section.
COMPONENT_SECTIONS: dict[str, str | None] = {
    "data": None,
    "model": None,
    "objective": "adversarial",
    "attack": None,
    "selector": "full",
    "optim": "sgd",
    "lr_schedule": "constant",
}


@dataclass
class ScheduleConfig:
    """When to train on the full data and when to (re)select a coreset (paper Sec. 3.3)."""

    epochs: int = param(10, ge=1, le=MAX_EPOCHS, help="total training epochs")
    warm_start_epochs: int = param(0, ge=0, le=MAX_EPOCHS, help="full-data epochs before the first selection")
    select_every: int = param(20, ge=1, le=MAX_EPOCHS, help="re-select the coreset every T epochs")
    skip_epochs: int = param(
        0, ge=0, le=MAX_EPOCHS,
        help="reference-code variant: epochs skipped (no training, lr schedule advances) between "
             "the warm start and the first selection",
    )


#: ``train.compile_mode``: torch.compile's modes; those with CUDA graphs are in :data:`CUDA_GRAPH_MODES`.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class TrainConfig:
    """Loop-level knobs that are not components."""

    max_steps_per_epoch: int | None = param(None, gt=0, le=2**40, help="cap batches per epoch (smoke tests)")
    grad_clip_value: float | None = param(None, gt=0, le=1e6, help="clip gradient values (PAT uses 1.0)")
    compile: bool | str = param("auto", choices=(True, False, "auto"),
                                help="torch.compile the model: auto (on for CUDA, off elsewhere), true (also on a CPU "
                                     "with a C++ compiler) or false; a failed compilation falls back to eager")
    compile_mode: str = param("default", choices=COMPILE_MODES,
                              help="torch.compile mode when compiling: default, reduce-overhead (CUDA graphs: "
                                   "fewer kernel launches per step), max-autotune (slower compile, tuned kernels, "
                                   "CUDA graphs) or max-autotune-no-cudagraphs")
    fold_bn: bool | str = param("auto", choices=(True, False, "auto"),
                                help="fold BatchNorm into the convolutions for the training attack's eval-mode "
                                     "passes: auto (on for CUDA, off elsewhere), true or false; a model that "
                                     "cannot be folded is attacked as it is")
    channels_last: bool | None = param(None, help="channels-last memory format for the model (default: on CUDA only)")
    data_on_device: bool = param(True, help="on CUDA, keep in-memory datasets on the GPU as uint8 and augment "
                                            "there (no per-batch host→device copies)")
    log_every: int = param(10, ge=1, le=10**6, help="refresh the progress line every N batches")
    overfit_guard: bool = param(
        False, help="Fast-AT catastrophic-overfitting guard: PGD on a fixed training batch after each "
                    "epoch; on collapse, revert to the previous epoch and stop")
    overfit_drop: float = param(0.2, gt=0, le=1, help="robust-accuracy drop (vs the best so far) that counts "
                                                       "as catastrophic overfitting")


@dataclass
class EvalConfig:
    """Robust validation during training."""

    attacks: list[str] = param(["pgd20"], help="eval attack names (see `advtrain list attacks`)")
    every: int = param(5, ge=0, le=MAX_EPOCHS, help="validate every N epochs (0: only after the last epoch)")
    n_examples: int = param(1000, ge=1, le=10**8, help="held-out examples used for validation")
    split: str = param("val", choices=("val", "test"), help="held-out split used during training")
    batch_size: int | None = param(None, gt=0, le=MAX_BATCH, help="eval batch size (default: data.batch_size)")
    eps: float | None = param(None, ge=0, le=1000, help="ε for every eval attack (default: each preset's)")
    alpha: float | None = param(None, gt=0, le=1000, help="step size for every eval attack (default: preset's)")


@dataclass
class OutputConfig:
    """Where a run writes its files."""

    dir: str = param("runs/${name}", path=True,
                     help="output folder (a relative path may not go up with '..')")
    keep_every: int = param(0, ge=0, le=MAX_EPOCHS, help="also keep epoch_XXX.safetensors every N epochs (0: never)")


@dataclass
class RuntimeConfig:
    """How this process uses the machine; may change on resume (it does not change the results' meaning)."""

    threads: str = param("auto", pattern=r"auto|[1-9][0-9]{0,3}",
                         help="CPU threads for torch: auto (from the CPUs this process may use: affinity, "
                              "cgroup quota) or a count; --threads and OMP_NUM_THREADS also set it")


@dataclass
class LogConfig:
    """Optional loggers beside metrics.jsonl, off by default (:mod:`advtrain.reports.loggers`)."""

    csv: bool = param(False, help="write metrics.csv (one row per epoch) in the run folder")
    tensorboard: bool = param(False, help="write TensorBoard event files to <run>/tensorboard "
                                          "(needs: pip install 'advtrain[tensorboard]')")


def compile_problems(config: TrainConfig) -> list[str]:
    """``train.compile_mode: ...`` when a mode is asked for but ``train.compile=false`` never compiles."""
    if config.compile is False and config.compile_mode != "default":
        return [f"train.compile_mode: {config.compile_mode} has no effect with train.compile=false; set "
                f"train.compile=auto (compiles on CUDA) or true, or leave compile_mode at default"]
    return []


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (the optional extra) can be imported."""
    return importlib.util.find_spec("tensorboard") is not None


def log_problems(config: LogConfig, *, available: bool | None = None) -> list[str]:
    """``log.tensorboard: ...`` when TensorBoard is asked for but not installed."""
    available = tensorboard_available() if available is None else available
    if config.tensorboard and not available:
        return ["log.tensorboard: true needs the tensorboard package, which is not installed; "
                "pip install 'advtrain[tensorboard]' (or set log.tensorboard=false)"]
    return []


@dataclass
class RecipeTop:
    """Top-level scalar keys."""

    name: str = param("run", pattern=NAME_PATTERN,
                      help="run name (used in the default output dir): letters, digits, . _ -")
    seed: int = param(0, ge=0, le=2**63 - 1, help="seeds torch, numpy and python")
    device: str = param("auto", pattern=r"auto|cpu|cuda(:\d{1,2})?|mps", help="auto | cpu | cuda | cuda:N | mps")
    precision: str = param("auto", choices=("auto", "fp32", "bf16", "fp16"),
                           help="auto = bf16 on CUDA, fp32 elsewhere")


FIXED_SECTIONS: dict[str, type] = {
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "runtime": RuntimeConfig,
    "log": LogConfig,
}
