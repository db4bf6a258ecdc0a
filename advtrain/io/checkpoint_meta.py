"""A checkpoint's JSON metadata, declared as params dataclasses and checked by the recipe validator.

The keys :func:`advtrain.io.checkpoint.save` writes are the fields of :class:`CheckpointMeta`, with
their types and ranges declared the way a component declares its recipe parameters
(:func:`advtrain.params.param`), and :func:`check_metadata` runs the recipe validator over them
(:func:`advtrain.params.check.check_params` in ``strict`` mode: JSON arrives typed, so
nothing is coerced). Nested records (``extra.in_epoch``, ``optimizer``, ``rng``) are dataclasses
too; what a field rule cannot say (the shape of an RNG state, optimizer settings that are numbers
or flags) is each record's own ``problems()``, the hook recipe params use for the same purpose.
One language for every file advtrain reads: a problem reads ``metadata.epoch: must be <= 1000000``
just as a recipe's reads ``schedule.epochs: must be <= 100000``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

from advtrain.params import param
from advtrain.params.check import check_params

FORMAT_VERSION = 1
#: A model name as timm spells it (letters, digits, ``. _ -``): never a path.
MODEL_NAME = r"[A-Za-z0-9._-]{1,200}"
MAX_EPOCH = 10**6
#: Optimizer parameter groups and settings: far above any real optimizer, far below a memory problem.
MAX_GROUPS, MAX_GROUP_PARAMS, MAX_SETTING_ITEMS = 64, 2**20, 16


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class PartialSums:
    """The running sums of an interrupted epoch (``extra.in_epoch.partial``)."""

    loss_sum: float = param(0.0, help="Σ loss·count over the batches done")
    correct: int = param(0, ge=0, le=2**62, help="correctly classified samples among them")
    seen: int = param(0, ge=0, le=2**62, help="samples among them")
    selection: dict[str, float] | None = param(None, help="timings of the selection pass the epoch ran")


@dataclass
class InEpoch:
    """An interrupted epoch (``extra.in_epoch``): a resume continues right after ``batch`` batches."""

    epoch: int = param(MISSING, ge=0, le=MAX_EPOCH, help="the interrupted (0-based) epoch")
    batch: int = param(MISSING, ge=0, le=2**40, help="batches of it already trained")
    partial: PartialSums = param(MISSING, help="their running sums")


@dataclass
class Extra:
    """``extra``: what only a mid-epoch checkpoint holds."""

    in_epoch: InEpoch | None = param(None, help="the interrupted epoch")


@dataclass
class OptimizerMeta:
    """``optimizer``: the optimizer's non-tensor state (its tensors are ``optim.<param>.<slot>``)."""

    param_groups: list[dict[str, Any]] = param(MISSING, help="torch's param_groups: settings and parameter indices")
    scalars: dict[str, float | bool | None] = param(MISSING, help="non-tensor slots as '<param>.<slot>'")

    def problems(self) -> list[str]:
        """Group and slot shapes: numbers or flags only (strings never reach an optimizer)."""
        out = []
        if len(self.param_groups) > MAX_GROUPS:
            out.append(f"param_groups: at most {MAX_GROUPS} groups, got {len(self.param_groups)}")
        for i, group in enumerate(self.param_groups[:MAX_GROUPS]):
            ids = group.get("params")
            if not isinstance(ids, list) or len(ids) > MAX_GROUP_PARAMS or not all(
                    isinstance(j, int) and not isinstance(j, bool) and 0 <= j < 2**31 for j in ids):
                out.append(f"param_groups[{i}].params: must be a list of parameter indices, got {_shown(ids)}")
            for key, value in group.items():
                if key != "params" and not _setting_ok(value):
                    out.append(f"param_groups[{i}].{key}: must be a number, true/false, null or a short list of "
                               f"numbers, got {_shown(value)} ({type(value).__name__})")
        for key in self.scalars:
            pid, _, slot = key.partition(".")
            if not (pid.isdigit() and slot):
                out.append(f"scalars.{key}: not a '<parameter index>.<slot>' name")
        return out


def _setting_ok(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) <= MAX_SETTING_ITEMS and all(_is_number(v) for v in value)
    return value is None or isinstance(value, bool) or _is_number(value)


@dataclass
class RngStates:
    """``rng``: numpy's and python's generator states (torch's are tensors ``rng.torch``/``rng.cuda.N``)."""

    numpy: list[Any] = param(MISSING, help="[kind, pos, has_gauss, gauss] of numpy's MT19937")
    python: list[Any] = param(MISSING, help="random.getstate(): [3, 625 words, gauss]")

    def problems(self) -> list[str]:
        """The exact shapes :func:`numpy.random.set_state` and :func:`random.setstate` accept."""
        out = []
        kind = self.numpy
        if not (len(kind) == 4 and kind[0] == "MT19937" and isinstance(kind[1], int) and not isinstance(kind[1], bool)
                and 0 <= kind[1] <= 624 and kind[2] in (0, 1) and not isinstance(kind[2], bool)
                and _is_number(kind[3])):
            out.append(f"numpy: must be numpy's MT19937 state [\"MT19937\", pos 0..624, 0|1, gauss], got "
                       f"{_shown(kind)}")
        py = self.python
        words = py[1] if len(py) == 3 else None
        if not (len(py) == 3 and py[0] == 3 and not isinstance(py[0], bool) and isinstance(words, list)
                and len(words) == 625
                and all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32 for w in words[:624])
                and isinstance(words[624], int) and 1 <= words[624] <= 624
                and (py[2] is None or _is_number(py[2]))):
            out.append(f"python: must be python's random.getstate() [3, 625 words, gauss], got {_shown(py)}")
        return out


@dataclass
class CheckpointMeta:
    """Every key of a checkpoint's ``advtrain`` metadata; anything else is refused."""

    format_version: int = param(MISSING, ge=1, le=FORMAT_VERSION, help="checkpoint format")
    kind: str = param(MISSING, choices=("last", "best", "epoch"), help="which of the run's checkpoints")
    model_name: str = param(MISSING, pattern=MODEL_NAME, help="the model's registered name")
    num_classes: int = param(MISSING, ge=1, le=100_000, help="classes the model predicts")
    in_chans: int = param(MISSING, ge=1, le=64, help="image channels the model takes")
    epoch: int = param(MISSING, ge=-1, le=MAX_EPOCH, help="last completed (0-based) epoch, -1 before the first")
    step: int = param(MISSING, ge=0, le=2**62, help="optimizer steps taken")
    rng: RngStates = param(MISSING, help="numpy and python RNG states")
    advtrain_version: str = param("", pattern=r"[^\x00-\x1f\x7f]{0,200}", help="the advtrain that wrote it")
    git: str = param("", pattern=r"[0-9a-zA-Z._-]{0,200}", help="its source commit, when known")
    best_metric: float | None = param(None, ge=0, le=1, help="best validation accuracy so far")
    best_epoch: int | None = param(None, ge=0, le=MAX_EPOCH, help="the epoch of best_metric")
    coreset_epoch: int | None = param(None, ge=0, le=MAX_EPOCH, help="the epoch that selected the stored coreset")
    scaler: dict[str, float | bool | None] | None = param(None, help="the fp16 gradient scaler's state")
    extra: Extra = dataclasses.field(default_factory=Extra, metadata={"help": "what only a mid-epoch checkpoint holds"})
    run_id: str | None = param(None, pattern=r"[A-Za-z0-9]{32}", help="the run it belongs to")
    optimizer: OptimizerMeta | None = param(None, help="the optimizer's non-tensor state")


def check_metadata(meta: dict[str, Any]) -> list[str]:
    """Every problem of a checkpoint's metadata (missing, unknown, mistyped, out of range), by key path."""
    problems: list[str] = []
    checked = check_params(CheckpointMeta, meta, "metadata", "the checkpoint metadata", problems, strict=True)
    if checked is not None:
        for key in ("rng", "optimizer"):
            record = getattr(checked, key)
            if record is not None:
                problems.extend(f"metadata.{key}.{p}" for p in record.problems())
    return problems


def meta_keys() -> list[str]:
    """The metadata keys advtrain writes."""
    return [f.name for f in dataclasses.fields(CheckpointMeta)]
