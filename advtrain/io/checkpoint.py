"""Checkpoints as safetensors files: tensors plus JSON/YAML metadata, written atomically.

No pickle anywhere: model and optimizer tensors go in the safetensors body, everything else
(the resolved recipe, epoch, optimizer hyper-parameters, python RNG state) goes in the string
metadata. A write goes to a temporary file in the same folder and is renamed into place, so a
crash or a full disk never leaves a half-written ``last.safetensors`` behind.

A checkpoint may come from anywhere, so :func:`load` checks it before anything uses it: the JSON
metadata against :data:`META_SCHEMA` (types and ranges), every tensor's name, dtype and shape
(RNG states, coreset, optimizer slots), and :func:`load_model_weights` each model tensor against
the model, naming the tensor and both sides. Nothing is cast silently.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from advtrain import __version__
from advtrain.errors import CheckpointError
from advtrain.io.files import TMP_GLOB, TMP_SUFFIX, write_atomically  # noqa: F401 - the one atomic writer

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint holds once read back."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def recipe_yaml(self) -> str:
        return self.meta["recipe"]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors stored under ``prefix.``, with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


@dataclass
class TrainingState:
    """Everything a run needs to continue: the loop fills it, :func:`save` writes it."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    epoch: int
    step: int
    recipe_yaml: str
    model_name: str
    num_classes: int
    in_chans: int
    best_metric: float | None = None
    best_epoch: int | None = None
    coreset_indices: torch.Tensor | None = None
    coreset_weights: torch.Tensor | None = None
    coreset_epoch: int | None = None
    scaler: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


def git_hash() -> str:
    """The source checkout's commit, when there is one (empty otherwise)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
    return tensors, meta


def restore_rng(ckpt: Checkpoint) -> None:
    """Put torch/numpy/python RNGs back to the state saved in ``ckpt`` (checked by :func:`load`)."""
    if "rng.torch" in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors["rng.torch"])
    cuda = [ckpt.tensors[k] for k in sorted(ckpt.tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    rng = ckpt.meta.get("rng")
    if rng and "rng.numpy" in ckpt.tensors:
        kind, pos, has_gauss, gauss = rng["numpy"]
        keys = ckpt.tensors["rng.numpy"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, pos, has_gauss, gauss))
        version, state, gauss_py = rng["python"]
        random.setstate((version, tuple(state), gauss_py))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(ckpt: Checkpoint) -> dict[str, Any] | None:
    """Rebuild ``optimizer.state_dict()`` from a checkpoint (None when it has none)."""
    meta = ckpt.meta.get("optimizer")
    if meta is None:
        return None
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in ckpt.section("optim").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = tensor
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(path: Path, state: TrainingState, *, kind: str = "last") -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename)."""
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "advtrain_version": __version__,
        "git": git_hash(),
        "kind": kind,
        "model_name": state.model_name,
        "num_classes": state.num_classes,
        "in_chans": state.in_chans,
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "coreset_epoch": state.coreset_epoch,
        "scaler": state.scaler,
        "extra": state.extra,
        "run_id": state.run_id,
    }
    if state.optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(state.optimizer)
        tensors.update(opt_tensors)
    if state.coreset_indices is not None:
        tensors["coreset.indices"] = state.coreset_indices.to(torch.int64)
        tensors["coreset.weights"] = state.coreset_weights.to(torch.float32)
    rng_tensors, meta["rng"] = _rng_tensors()
    tensors.update(rng_tensors)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"advtrain": json.dumps(meta), "recipe": state.recipe_yaml,
                "model_name": state.model_name, "advtrain_version": __version__}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; refuse anything else with a clear message."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist. Pass the path of a "
                              f".safetensors file written by `advtrain run` (e.g. runs/NAME/best.safetensors).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors checkpoint (truncated or another format: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}). advtrain only reads "
            f".safetensors files it wrote; it never unpickles .pt/.pth files."
        ) from None
    if "advtrain" not in raw_meta or "recipe" not in raw_meta:
        raise CheckpointError(f"'{path}' is a safetensors file but not an advtrain checkpoint "
                              f"(no advtrain metadata).")
    try:
        meta = json.loads(raw_meta["advtrain"])
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"'{path}': advtrain metadata is corrupt (not JSON).") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}': advtrain metadata must be a JSON object, got {type(meta).__name__}; "
                              "this file was not written by advtrain.")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format {version!r}, newer than this advtrain "
            f"({__version__}) reads (format {FORMAT_VERSION}). Upgrade advtrain.")
    problems = [*check_metadata(meta), *check_tensors(meta, tensors)]
    if problems:
        raise CheckpointError(f"'{path}' is not a valid advtrain checkpoint (damaged, edited or not written by "
                              f"advtrain); nothing was loaded from it:\n  - " + "\n  - ".join(problems[:10]))
    meta["recipe"] = raw_meta["recipe"]
    return Checkpoint(path, tensors, meta)


# ------------------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, float) and math.isfinite(v)) or _is_int(v)


def _int(lo: int, hi: int) -> Any:
    return lambda v: _is_int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]"


def _optional(rule: tuple) -> tuple:
    check, text = rule
    return lambda v: v is None or check(v), f"{text} or null"


def _scalars(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and (v2 is None or isinstance(v2, bool) or _is_num(v2))
                                       for k, v2 in v.items())


def _param_groups(v: Any) -> bool:
    def value_ok(x: Any) -> bool:
        if isinstance(x, list):
            return len(x) <= 2**20 and all(_is_num(i) for i in x)
        return x is None or isinstance(x, (bool, str)) and len(str(x)) < 100 or _is_num(x)

    return isinstance(v, list) and len(v) <= 64 and all(
        isinstance(g, dict) and _is_int_list(g.get("params")) and all(isinstance(k, str) and value_ok(x)
                                                                       for k, x in g.items()) for g in v)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(i) and 0 <= i < 2**31 for i in v)


def _optimizer(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"param_groups", "scalars"} and _param_groups(v["param_groups"]) \
        and _scalars(v["scalars"]) and all(k.split(".", 1)[0].isdigit() and "." in k for k in v["scalars"])


def _rng(v: Any) -> bool:
    if not isinstance(v, dict) or set(v) != {"numpy", "python"}:
        return False
    np_state, py_state = v["numpy"], v["python"]
    numpy_ok = (isinstance(np_state, list) and len(np_state) == 4 and np_state[0] == "MT19937"
                and _is_int(np_state[1]) and 0 <= np_state[1] <= 624 and np_state[2] in (0, 1)
                and _is_num(np_state[3]))
    python_ok = (isinstance(py_state, list) and len(py_state) == 3 and py_state[0] == 3
                 and isinstance(py_state[1], list) and len(py_state[1]) == 625
                 and all(_is_int(i) and 0 <= i < 2**32 for i in py_state[1][:624])
                 and _is_int(py_state[1][624]) and 1 <= py_state[1][624] <= 624
                 and (py_state[2] is None or _is_num(py_state[2])))
    return numpy_ok and python_ok


def _extra(v: Any) -> bool:
    if not isinstance(v, dict) or set(v) - {"in_epoch"}:
        return False
    in_epoch = v.get("in_epoch")
    if in_epoch is None:
        return True
    if not isinstance(in_epoch, dict) or set(in_epoch) != {"epoch", "batch", "partial"}:
        return False
    partial = in_epoch["partial"]
    return (_is_int(in_epoch["epoch"]) and 0 <= in_epoch["epoch"] <= 10**6 and _is_int(in_epoch["batch"])
            and 0 <= in_epoch["batch"] <= 2**40 and isinstance(partial, dict)
            and set(partial) <= {"loss_sum", "correct", "seen", "selection"}
            and all(_is_num(partial.get(k, 0)) for k in ("loss_sum", "correct", "seen"))
            and (partial.get("selection") is None or _scalars(partial["selection"])))


_NAME = (lambda v: isinstance(v, str) and 0 < len(v) <= 200 and v.replace("_", "").replace(".", "")
         .replace("-", "").isalnum(), "a model name (letters, digits, . _ -)")
_TEXT = (lambda v: isinstance(v, str) and len(v) <= 200, "a short string")

#: Every key :func:`save` writes, with (check, what it must be). Anything else is refused.
META_SCHEMA: dict[str, tuple] = {
    "format_version": _int(1, FORMAT_VERSION),
    "advtrain_version": _TEXT,
    "git": _TEXT,
    "kind": (lambda v: v in ("last", "best", "epoch"), "one of last, best, epoch"),
    "model_name": _NAME,
    "num_classes": _int(1, 100_000),
    "in_chans": _int(1, 64),
    "epoch": _int(-1, 10**6),
    "step": _int(0, 2**62),
    "best_metric": (lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "an accuracy in [0, 1] or null"),
    "best_epoch": _optional(_int(0, 10**6)),
    "coreset_epoch": _optional(_int(0, 10**6)),
    "scaler": (lambda v: v is None or _scalars(v), "a mapping of numbers or null"),
    "extra": (_extra, "a mapping with an optional in_epoch {epoch, batch, partial}"),
    "run_id": (lambda v: v is None or (isinstance(v, str) and len(v) == 32 and v.isalnum()),
               "a 32-character run id or null"),
    "optimizer": (_optimizer, "a mapping {param_groups: [...], scalars: {...}} of numbers"),
    "rng": (_rng, "the numpy and python RNG states advtrain writes"),
}
REQUIRED_META = ("format_version", "kind", "model_name", "num_classes", "in_chans", "epoch", "step", "rng")


def check_metadata(meta: dict[str, Any]) -> list[str]:
    """One line per metadata key that is missing, unknown, or of the wrong type or range."""
    problems = [f"metadata key '{k}' is missing" for k in REQUIRED_META if k not in meta]
    for key, value in meta.items():
        rule = META_SCHEMA.get(key)
        if rule is None:
            problems.append(f"metadata key '{key}' is not one advtrain writes")
            continue
        check, what = rule
        if key in meta and not check(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            problems.append(f"metadata '{key}' must be {what}, got {shown} ({type(value).__name__})")
    return problems


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} of shape {tuple(t.shape)}"


def check_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor whose name, dtype or shape is not what :func:`save` writes.

    Model tensors are checked against the model by :func:`load_model_weights`, optimizer slots
    against the parameters by :func:`check_optimizer_tensors`; here only what needs no model.
    """
    problems = []
    expected: dict[str, tuple[torch.dtype, tuple[int, ...] | None]] = {
        "rng.torch": (torch.uint8, tuple(torch.get_rng_state().shape)),
        "rng.numpy": (torch.int64, (624,)),
    }
    n_coreset = tensors["coreset.indices"].shape if "coreset.indices" in tensors else None
    for name, tensor in tensors.items():
        if name.startswith("model."):
            continue
        if name.startswith("optim."):
            parts = name.split(".")
            slot_dtype = tensor.is_floating_point() or tensor.dtype == torch.int64
            if len(parts) < 3 or not parts[1].isdigit() or not slot_dtype:
                problems.append(f"tensor '{name}' ({_describe(tensor)}) is not an optimizer slot advtrain writes")
            elif not isinstance(meta.get("optimizer"), dict):
                problems.append(f"tensor '{name}' is an optimizer slot but the metadata has no optimizer")
            continue
        if name.startswith("rng.cuda."):
            if not name[len("rng.cuda."):].isdigit() or tensor.dtype != torch.uint8 or tensor.dim() != 1:
                problems.append(f"tensor '{name}' is {_describe(tensor)}; expected a 1-D uint8 CUDA RNG state")
            continue
        if name in ("coreset.indices", "coreset.weights"):
            dtype = torch.int64 if name == "coreset.indices" else torch.float32
            if tensor.dtype != dtype or tensor.dim() != 1 or tensor.shape != n_coreset:
                problems.append(f"tensor '{name}' is {_describe(tensor)}; expected "
                                f"{str(dtype).replace('torch.', '')} of shape {tuple(n_coreset or ())} "
                                "(one entry per selected sample)")
            elif name == "coreset.weights" and not bool(torch.isfinite(tensor).all() and (tensor >= 0).all()):
                problems.append("tensor 'coreset.weights' holds negative or non-finite weights")
            continue
        if name not in expected:
            problems.append(f"tensor '{name}' ({_describe(tensor)}) is not one advtrain writes")
            continue
        dtype, shape = expected[name]
        if tensor.dtype != dtype or (shape is not None and tuple(tensor.shape) != shape):
            problems.append(f"tensor '{name}' is {_describe(tensor)}; expected {str(dtype).replace('torch.', '')} "
                            f"of shape {shape}")
    if ("coreset.indices" in tensors) != ("coreset.weights" in tensors):
        problems.append("tensors 'coreset.indices' and 'coreset.weights' must come together")
    if "coreset.indices" in tensors and meta.get("coreset_epoch") is None:
        problems.append("the checkpoint holds a coreset but metadata 'coreset_epoch' is null")
    if "rng.numpy" in tensors and not bool(((tensors["rng.numpy"] >= 0) & (tensors["rng.numpy"] < 2**32)).all()):
        problems.append("tensor 'rng.numpy' holds values outside 0..2^32-1")
    return problems


def check_optimizer_tensors(ckpt: Checkpoint, params: list[torch.Tensor]) -> None:
    """Each ``optim.<i>.<slot>`` tensor must match parameter ``i`` (or be a scalar step count)."""
    problems = []
    for name, tensor in ckpt.section("optim").items():
        pid, slot = name.split(".", 1)
        index = int(pid)
        if index >= len(params):
            problems.append(f"tensor 'optim.{name}' belongs to parameter {index}, but the model has {len(params)}")
            continue
        param = params[index]
        if tensor.dim() == 0 and slot == "step":
            continue
        if tensor.shape != param.shape or tensor.dtype != param.dtype:
            problems.append(f"tensor 'optim.{name}' is {_describe(tensor)} but parameter {index} is "
                            f"{_describe(param)}")
    groups = ckpt.meta["optimizer"]["param_groups"] if ckpt.meta.get("optimizer") else []
    if groups and sorted(i for g in groups for i in g["params"]) != list(range(len(params))):
        problems.append(f"the optimizer's parameter groups list {sum(len(g['params']) for g in groups)} "
                        f"parameter(s), but the model has {len(params)}")
    if problems:
        raise CheckpointError(f"checkpoint '{ckpt.path}' has optimizer state that does not fit the model:\n  - "
                              + "\n  - ".join(problems[:10]))


def check_model_matches(ckpt: Checkpoint, model_name: str, num_classes: int) -> None:
    """Refuse a checkpoint made for another architecture or class count, naming both sides."""
    theirs = (ckpt.meta.get("model_name"), ckpt.meta.get("num_classes"))
    if theirs != (model_name, num_classes):
        raise CheckpointError(
            f"checkpoint '{ckpt.path}' holds model '{theirs[0]}' with {theirs[1]} classes, but the "
            f"recipe builds '{model_name}' with {num_classes} classes. Use a checkpoint of the same "
            f"model, or change model.name/num_classes to match it.")


def load_model_weights(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """Check the architecture and load the checkpoint's weights into ``model``, or explain why not.

    Every tensor is compared with the model's before anything is copied: names, dtype and shape
    (naming the tensor and both sides), and floating-point weights must be finite.
    """
    check_model_matches(ckpt, model.model_name, model.num_classes)
    theirs = ckpt.section("model")
    ours = model.state_dict()
    problems = [f"tensor 'model.{k}' is missing" for k in ours if k not in theirs]
    problems += [f"tensor 'model.{k}' is not part of the model" for k in theirs if k not in ours]
    for key in ours.keys() & theirs.keys():
        a, b = theirs[key], ours[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"tensor 'model.{key}' is {_describe(a)} in the checkpoint but model "
                            f"'{model.model_name}' expects {_describe(b)}")
        elif a.is_floating_point() and not bool(torch.isfinite(a).all()):
            problems.append(f"tensor 'model.{key}' holds non-finite values (NaN or inf)")
    if problems:
        raise CheckpointError(f"checkpoint '{ckpt.path}' does not fit model '{model.model_name}':\n  - "
                              + "\n  - ".join(sorted(problems)[:10]))
    model.load_state_dict(theirs)
