"""Checkpoints as safetensors files: tensors plus JSON/YAML metadata, written atomically.

No pickle anywhere: model and optimizer tensors go in the safetensors body, everything else
(the resolved recipe, the run's :class:`~advtrain.io.run_state.RunState`, optimizer settings,
python RNG state) goes in the string metadata. A write goes to a temporary file in the same folder
and is renamed into place, so a crash or a full disk never leaves a half-written
``last.safetensors`` behind.

A checkpoint may come from anywhere, so :func:`load` checks it before anything uses it: the JSON
metadata by the recipe validator against :class:`~advtrain.io.checkpoint_meta.CheckpointMeta`, and
every tensor's name, dtype and shape *from the file's header*, before any tensor is read: the
bookkeeping tensors (RNG states, coreset) against what :func:`save` writes, the model and optimizer
tensors against the model (:func:`load_model_weights`, :func:`check_optimizer_tensors`) when they
are read, so a header declaring a 16 GiB tensor allocates nothing. Nothing is cast silently.

Resuming (:func:`resume`) checks the rest against the recipe before anything changes: the model,
the recipe, the optimizer's settings (hyper-parameters come from the recipe; the checkpoint's must
equal them, with their types), the stored coreset (unique, in range, of the recipe's budget), and
only then loads the weights, the optimizer state, the scaler and the RNGs.
"""

from __future__ import annotations

import json
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
from advtrain.coreset import Coreset
from advtrain.errors import CheckpointError
from advtrain.io.checkpoint_meta import FORMAT_VERSION, check_metadata
from advtrain.io.files import TMP_GLOB, TMP_SUFFIX, write_atomically  # noqa: F401 - the one atomic writer
from advtrain.io.run_state import EpochProgress, RunState

__all__ = ["FORMAT_VERSION", "Checkpoint", "RunState", "TrainingState", "check_metadata", "load", "resume", "save",
           "write_atomically"]

#: Recipe keys that may change between a checkpoint and a resumed run.
RESUMABLE_KEYS = ("name", "device", "output", "eval", "runtime", "log")
#: Keys inside other sections that only choose how the same thing is computed (compilation, the
#: fused optimizer update, the attack's BatchNorm-folded view): they may change on resume, and a
#: stored recipe without them (an earlier advtrain's) resumes as well.
RUNTIME_KEY_PATHS = ("train.compile", "train.compile_mode", "train.fold_bn", "optim.fused")
#: Optimizer settings that pick torch's implementation of the same update, not the update itself.
IMPLEMENTATION_SETTINGS = ("fused", "foreach")
#: The most entries a stored coreset may declare (read before the data is known: 800 MB of int64).
MAX_CORESET = 10**8
#: safetensors dtype names → torch dtypes (what a header may declare; anything else is refused).
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
#: Tensors :func:`load` reads at once (small, checked from the header first); the rest when asked.
_BOOKKEEPING = ("rng", "coreset")

TensorInfo = tuple[torch.dtype, tuple[int, ...]]


@dataclass
class Checkpoint:
    """What a checkpoint holds once checked: its metadata, every tensor's header, the small tensors.

    Attributes:
        path: The file.
        meta: The checked ``advtrain`` metadata, plus ``recipe`` (the stored recipe's YAML text).
        headers: dtype and shape of every tensor, as the file's header declares them.
        tensors: The bookkeeping tensors (``rng.*``, ``coreset.*``), read and checked by :func:`load`;
            model and optimizer tensors are read by :meth:`section` once checked against the model.
    """

    path: Path
    meta: dict[str, Any]
    headers: dict[str, TensorInfo] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def recipe_yaml(self) -> str:
        return self.meta["recipe"]

    def infos(self, prefix: str) -> dict[str, TensorInfo]:
        """Headers of the tensors stored under ``prefix.``, with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.headers.items() if k.startswith(prefix + ".")}

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors stored under ``prefix.`` (prefix removed), read from the file as its header declared them."""
        names = [k for k in self.headers if k.startswith(prefix + ".")]
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                out = {k[len(prefix) + 1:]: handle.get_tensor(k) for k in names}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"'{self.path}' could not be read again ({_first_line(err)}); was it changed "
                                  f"while advtrain read it?") from None
        for name, tensor in out.items():
            if (tensor.dtype, tuple(tensor.shape)) != self.headers[f"{prefix}.{name}"]:
                raise CheckpointError(f"'{self.path}' changed while advtrain read it (tensor '{prefix}.{name}').")
        return out


@dataclass
class TrainingState:
    """One checkpoint's content: the run's :class:`RunState` with the model, optimizer and scaler state."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    recipe_yaml: str
    model_name: str
    num_classes: int
    in_chans: int
    run: RunState = field(default_factory=RunState)
    scaler: dict[str, Any] | None = None


def git_hash() -> str:
    """The source checkout's commit, when there is one (empty otherwise)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


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
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    The run state goes in the metadata as format 1 has always written it: ``epoch`` is the last
    completed epoch, and a mid-epoch state adds ``extra.in_epoch``.
    """
    run = state.run
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "advtrain_version": __version__,
        "git": git_hash(),
        "kind": kind,
        "model_name": state.model_name,
        "num_classes": state.num_classes,
        "in_chans": state.in_chans,
        "epoch": run.epoch - 1,
        "step": run.step,
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
        "coreset_epoch": None if run.coreset is None else run.coreset.epoch,
        "scaler": state.scaler or None,  # a disabled GradScaler's state is {}: written as null, as before
        "extra": run.in_epoch.to_extra() if run.in_epoch is not None else {},
        "run_id": run.run_id,
    }
    if state.optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(state.optimizer)
        tensors.update(opt_tensors)
    if run.coreset is not None:
        tensors["coreset.indices"] = run.coreset.indices.to(torch.int64)
        tensors["coreset.weights"] = run.coreset.weights.to(torch.float32)
    rng_tensors, meta["rng"] = _rng_tensors()
    tensors.update(rng_tensors)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"advtrain": json.dumps(meta), "recipe": state.recipe_yaml,
                "model_name": state.model_name, "advtrain_version": __version__}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, TensorInfo], list[str]]:
    """(string metadata, tensor headers, problems) from the file's header; no tensor is read."""
    with safe_open(str(path), framework="pt") as handle:
        raw_meta = handle.metadata() or {}
        headers, problems = {}, []
        for name in handle.keys():
            view = handle.get_slice(name)
            dtype, shape = _DTYPES.get(view.get_dtype()), tuple(int(n) for n in view.get_shape())
            if dtype is None:
                problems.append(f"tensor '{name}' has dtype {view.get_dtype()}, which advtrain never writes")
                continue
            headers[name] = (dtype, shape)
    return raw_meta, headers, problems


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; refuse anything else with a clear message."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist. Pass the path of a "
                              f".safetensors file written by `advtrain run` (e.g. runs/NAME/best.safetensors).")
    try:
        raw_meta, headers, header_problems = _read_header(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors checkpoint (truncated or another format: "
            f"{_first_line(err)}). advtrain only reads .safetensors files it wrote; it never unpickles "
            f".pt/.pth files."
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
    problems = [*header_problems, *check_metadata(meta), *check_headers(meta, headers)]
    ckpt = Checkpoint(path, meta, headers)
    if not problems:
        for prefix in _BOOKKEEPING:
            ckpt.tensors.update({f"{prefix}.{k}": v for k, v in ckpt.section(prefix).items()})
        problems = check_tensor_values(ckpt.tensors)
    if problems:
        raise CheckpointError(f"'{path}' is not a valid advtrain checkpoint (damaged, edited or not written by "
                              f"advtrain); nothing was loaded from it:\n  - " + "\n  - ".join(problems[:10]))
    meta["recipe"] = raw_meta["recipe"]
    return ckpt


# ------------------------------------------------------------------------------------- validation
def _describe(info: TensorInfo | torch.Tensor) -> str:
    dtype, shape = (info.dtype, tuple(info.shape)) if isinstance(info, torch.Tensor) else info
    return f"{str(dtype).replace('torch.', '')} of shape {tuple(shape)}"


def check_headers(meta: dict[str, Any], headers: dict[str, TensorInfo]) -> list[str]:
    """One line per tensor whose name, dtype or shape (from the header) is not what :func:`save` writes.

    Model tensors are checked against the model by :func:`load_model_weights`, optimizer slots
    against the parameters by :func:`check_optimizer_tensors`; here only what needs no model.
    """
    problems = []
    expected: dict[str, TensorInfo] = {
        "rng.torch": (torch.uint8, tuple(torch.get_rng_state().shape)),
        "rng.numpy": (torch.int64, (624,)),
    }
    n_coreset = headers["coreset.indices"][1] if "coreset.indices" in headers else None
    for name, (dtype, shape) in headers.items():
        if name.startswith("model."):
            continue
        if name.startswith("optim."):
            parts = name.split(".")
            slot_dtype = dtype.is_floating_point or dtype == torch.int64
            if len(parts) < 3 or not parts[1].isdigit() or not slot_dtype:
                problems.append(f"tensor '{name}' ({_describe((dtype, shape))}) is not an optimizer slot advtrain "
                                f"writes")
            elif not isinstance(meta.get("optimizer"), dict):
                problems.append(f"tensor '{name}' is an optimizer slot but the metadata has no optimizer")
            continue
        if name.startswith("rng.cuda."):
            if not name[len("rng.cuda."):].isdigit() or dtype != torch.uint8 or len(shape) != 1 or shape[0] > 2**16:
                problems.append(f"tensor '{name}' is {_describe((dtype, shape))}; expected a 1-D uint8 CUDA RNG "
                                f"state")
            continue
        if name in ("coreset.indices", "coreset.weights"):
            want = torch.int64 if name == "coreset.indices" else torch.float32
            if dtype != want or len(shape) != 1 or shape != n_coreset or shape[0] > MAX_CORESET:
                problems.append(f"tensor '{name}' is {_describe((dtype, shape))}; expected "
                                f"{str(want).replace('torch.', '')} of shape {tuple(n_coreset or ())} "
                                f"(one entry per selected sample, at most {MAX_CORESET})")
            continue
        if name not in expected:
            problems.append(f"tensor '{name}' ({_describe((dtype, shape))}) is not one advtrain writes")
            continue
        if (dtype, shape) != expected[name]:
            problems.append(f"tensor '{name}' is {_describe((dtype, shape))}; expected {_describe(expected[name])}")
    if ("coreset.indices" in headers) != ("coreset.weights" in headers):
        problems.append("tensors 'coreset.indices' and 'coreset.weights' must come together")
    if "coreset.indices" in headers and meta.get("coreset_epoch") is None:
        problems.append("the checkpoint holds a coreset but metadata 'coreset_epoch' is null")
    return problems


def check_tensor_values(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Values of the bookkeeping tensors (read once their headers passed :func:`check_headers`)."""
    problems = []
    weights = tensors.get("coreset.weights")
    if weights is not None and not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
        problems.append("tensor 'coreset.weights' holds negative or non-finite weights")
    if "rng.numpy" in tensors and not bool(((tensors["rng.numpy"] >= 0) & (tensors["rng.numpy"] < 2**32)).all()):
        problems.append("tensor 'rng.numpy' holds values outside 0..2^32-1")
    return problems


def check_optimizer_tensors(ckpt: Checkpoint, params: list[torch.Tensor]) -> None:
    """Each ``optim.<i>.<slot>`` tensor must match parameter ``i`` (or be a scalar step count), from its header."""
    problems = []
    for name, (dtype, shape) in ckpt.infos("optim").items():
        pid, slot = name.split(".", 1)
        index = int(pid)
        if index >= len(params):
            problems.append(f"tensor 'optim.{name}' belongs to parameter {index}, but the model has {len(params)}")
            continue
        param = params[index]
        if len(shape) == 0 and slot == "step":
            continue
        if shape != tuple(param.shape) or dtype != param.dtype:
            problems.append(f"tensor 'optim.{name}' is {_describe((dtype, shape))} but parameter {index} is "
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

    Every tensor's header is compared with the model's before anything is read: names, dtype and
    shape (naming the tensor and both sides); then floating-point weights must be finite.
    """
    check_model_matches(ckpt, model.model_name, model.num_classes)
    theirs = ckpt.infos("model")
    ours = model.state_dict()
    problems = [f"tensor 'model.{k}' is missing" for k in ours if k not in theirs]
    problems += [f"tensor 'model.{k}' is not part of the model" for k in theirs if k not in ours]
    for key in ours.keys() & theirs.keys():
        if theirs[key] != (ours[key].dtype, tuple(ours[key].shape)):
            problems.append(f"tensor 'model.{key}' is {_describe(theirs[key])} in the checkpoint but model "
                            f"'{model.model_name}' expects {_describe(ours[key])}")
    if not problems:
        weights = ckpt.section("model")
        problems = [f"tensor 'model.{k}' holds non-finite values (NaN or inf)" for k, t in weights.items()
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if problems:
        raise CheckpointError(f"checkpoint '{ckpt.path}' does not fit model '{model.model_name}':\n  - "
                              + "\n  - ".join(sorted(problems)[:10]))
    model.load_state_dict(weights)


# ------------------------------------------------------------------------------------------ resume
def recipe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Key paths whose values differ between two resolved recipes (ignoring RESUMABLE_KEYS and RUNTIME_KEY_PATHS)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if (not prefix and key in RESUMABLE_KEYS) or path in RUNTIME_KEY_PATHS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(recipe_differences(a, b, path + "."))
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r} vs recipe {b!r}")
    return diffs


def check_recipe(ckpt: Checkpoint, old: dict[str, Any], recipe: dict[str, Any], *, force: bool) -> None:
    """Refuse a checkpoint trained with another recipe (RESUMABLE_KEYS aside) unless ``force``.

    ``old`` is the checkpoint's stored recipe, parsed by the caller within the limits of a recipe
    file (:func:`advtrain.config.read.parse_stored_recipe`: size, depth, aliases).
    """
    diffs = recipe_differences(old, recipe)
    if diffs and not force:
        raise CheckpointError(
            f"the recipe differs from the one checkpoint '{ckpt.path}' was trained with:\n  "
            + "\n  ".join(diffs) + "\nResume with the same recipe, or pass --force to continue anyway.")


def _kind(value: Any) -> str:
    """The JSON kind of an optimizer setting: flag, number, list, null (what a stored one must keep)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list of numbers"
    return "null" if value is None else type(value).__name__


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_optimizer_settings(ckpt: Checkpoint, optimizer: torch.optim.Optimizer, name: str, *,
                             force: bool) -> None:
    """The checkpoint's optimizer settings must be the recipe's: same groups, same types, same values.

    Hyper-parameters come from the recipe (:func:`resume` loads the recipe's param_groups, never
    the stored ones), so this is about telling the user: a stored ``maximize: true`` or
    ``momentum: 0.5`` means the checkpoint was trained otherwise (refused unless ``force``, like a
    recipe difference); a value of the wrong type (``maximize: "no"``, ``momentum: "abc"``) means it
    was edited or damaged (always refused). ``lr`` is the schedule's value at the save: only its
    type is checked. A stored key this torch's optimizer lacks is accepted only switched off
    (null or false: a feature flag of another torch version). ``fused`` and ``foreach`` are not
    compared: they choose torch's implementation of the same update (``optim.fused``).
    """
    stored = (ckpt.meta.get("optimizer") or {}).get("param_groups")
    if stored is None:
        return
    fresh = optimizer.state_dict()["param_groups"]
    damaged, differ = [], []
    if len(stored) != len(fresh):
        damaged.append(f"param_groups: the checkpoint has {len(stored)} group(s), optimizer '{name}' has {len(fresh)}")
    for i, (theirs, ours) in enumerate(zip(stored, fresh, strict=False)):  # a count mismatch is reported above
        if theirs.get("params") != ours["params"]:
            damaged.append(f"param_groups[{i}].params: the checkpoint lists parameters {theirs.get('params')!r:.60}, "
                           f"the model's optimizer {ours['params']!r:.60}")
        for key in sorted(set(theirs) - {"params", *IMPLEMENTATION_SETTINGS}):
            value = theirs[key]
            where = f"param_groups[{i}].{key}"
            if key not in ours:
                if value not in (None, False):
                    differ.append(f"{where}: {value!r} in the checkpoint, but optimizer '{name}' has no such "
                                  f"setting")
            elif _kind(value) != _kind(ours[key]) or (isinstance(value, list) and len(value) != len(ours[key])):
                damaged.append(f"{where}: must be {_kind(ours[key])} (optimizer '{name}'), got {value!r:.60} "
                               f"({type(value).__name__})")
            elif key != "lr" and value != _plain(ours[key]):
                differ.append(f"{where}: checkpoint {value!r} vs recipe {_plain(ours[key])!r}")
            elif key == "lr" and value < 0:
                damaged.append(f"{where}: must be a learning rate >= 0, got {value!r}")
    if damaged or (differ and not force):
        problems = damaged + ([] if force else differ)
        hint = ("it was edited or damaged; nothing was loaded from it" if damaged else
                "it was trained with other optimizer settings than the recipe's; resume with the recipe it was "
                "trained with, or pass --force to continue with the recipe's settings")
        raise CheckpointError(f"checkpoint '{ckpt.path}': its optimizer settings do not fit optimizer '{name}' of "
                              f"the recipe ({hint}):\n  - " + "\n  - ".join(problems[:10]))


def check_coreset(ckpt: Checkpoint, n_train: int, sizes: tuple[int, int] | None) -> Coreset | None:
    """The stored coreset, checked against the training split: unique indices in range, of the recipe's size.

    ``sizes``: the (smallest, largest) coreset the recipe's selector makes from this training split
    (None: the recipe never trains on a coreset, so a stored one is not used and not checked).
    """
    if "coreset.indices" not in ckpt.tensors or sizes is None:
        return None
    indices, weights = ckpt.tensors["coreset.indices"], ckpt.tensors["coreset.weights"]
    where = f"checkpoint '{ckpt.path}': its stored coreset"
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_train):
        raise CheckpointError(f"{where} (tensor 'coreset.indices') holds indices outside 0..{n_train - 1}, the "
                              f"training samples of this recipe's data.")
    unique = len(torch.unique(indices))
    if unique != len(indices):
        raise CheckpointError(f"{where} (tensor 'coreset.indices') repeats samples: {len(indices)} indices but "
                              f"{unique} distinct ones (a coreset selects each sample at most once).")
    lo, hi = sizes
    if not lo <= len(indices) <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise CheckpointError(f"{where} holds {len(indices)} samples, but the recipe's selector selects {want} of "
                              f"the {n_train} training samples (selector.fraction).")
    if not bool((weights > 0).all()):
        raise CheckpointError(f"{where} (tensor 'coreset.weights') gives a selected sample weight 0.")
    return Coreset(indices, weights, int(ckpt.meta["coreset_epoch"]))


def resume(ckpt: Checkpoint, *, stored_recipe: dict[str, Any], model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, optimizer_name: str,
           scaler: torch.amp.GradScaler, recipe: dict[str, Any], n_train: int,
           coreset_sizes: tuple[int, int] | None, force: bool) -> RunState:
    """Check ``ckpt`` against this run, then load it into ``model``/``optimizer``/``scaler`` and the RNGs.

    Everything is checked before anything changes: the model, the recipe (unless ``force``), the
    optimizer's tensors and settings, the coreset. The optimizer keeps the recipe's settings
    (param_groups) and takes the checkpoint's per-parameter state (momentum buffers, step counts).

    Returns:
        The run state to continue from (its ``run_id`` is the checkpoint's; the caller decides
        whether the run folder keeps it).
    """
    check_model_matches(ckpt, model.model_name, model.num_classes)  # before the recipe diff: the plainer message
    check_recipe(ckpt, stored_recipe, recipe, force=force)
    coreset = check_coreset(ckpt, n_train, coreset_sizes)
    check_optimizer_tensors(ckpt, [p for g in optimizer.param_groups for p in g["params"]])
    check_optimizer_settings(ckpt, optimizer, optimizer_name, force=force)
    load_model_weights(ckpt, model)
    stored = optimizer_state(ckpt)
    if stored is not None:
        # The recipe's settings; the stored lr (the schedule's value at the save) until the next step sets it.
        ours = [{**group, "lr": theirs.get("lr", group["lr"])}
                for group, theirs in zip(optimizer.state_dict()["param_groups"], stored["param_groups"], strict=True)]
        try:
            optimizer.load_state_dict({"state": stored["state"], "param_groups": ours})
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint '{ckpt.path}': its optimizer state does not fit optimizer "
                                  f"'{optimizer_name}' ({err}).") from None
    meta = ckpt.meta
    if meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    restore_rng(ckpt)
    in_epoch = EpochProgress.from_extra(meta.get("extra"))
    return RunState(epoch=in_epoch.epoch if in_epoch is not None else int(meta["epoch"]) + 1, step=int(meta["step"]),
                    run_id=meta.get("run_id"), best_metric=meta.get("best_metric"), best_epoch=meta.get("best_epoch"),
                    coreset=coreset, in_epoch=in_epoch if in_epoch is not None and in_epoch.batch > 0 else None)
