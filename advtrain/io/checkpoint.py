"""Checkpoints as safetensors files: tensors plus JSON/YAML metadata, written atomically.

No pickle anywhere: model and optimizer tensors go in the safetensors body, everything else
(the resolved recipe, epoch, optimizer hyper-parameters, python RNG state) goes in the string
metadata. A write goes to a temporary file in the same folder and is renamed into place, so a
crash or a full disk never leaves a half-written ``last.safetensors`` behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from advtrain import __version__
from advtrain.errors import CheckpointError, UserError

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
    """Put torch/numpy/python RNGs back to the state saved in ``ckpt``."""
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


def write_atomically(path: Path, write: Any) -> None:
    """Run ``write(tmp_path)`` then rename onto ``path``; on any failure keep the old file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write '{path}': {err.strerror or err}. Choose a writable "
                        f"output.dir.") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write '{path}' ({err}); the previous file, if any, is intact. "
                        f"Free disk space or choose another output.dir.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    except json.JSONDecodeError:
        raise CheckpointError(f"'{path}': advtrain metadata is corrupt (not JSON).") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format {version!r}, newer than this advtrain "
            f"({__version__}) reads (format {FORMAT_VERSION}). Upgrade advtrain.")
    meta["recipe"] = raw_meta["recipe"]
    return Checkpoint(path, tensors, meta)


def check_model_matches(ckpt: Checkpoint, model_name: str, num_classes: int) -> None:
    """Refuse a checkpoint made for another architecture or class count, naming both sides."""
    theirs = (ckpt.meta.get("model_name"), ckpt.meta.get("num_classes"))
    if theirs != (model_name, num_classes):
        raise CheckpointError(
            f"checkpoint '{ckpt.path}' holds model '{theirs[0]}' with {theirs[1]} classes, but the "
            f"recipe builds '{model_name}' with {num_classes} classes. Use a checkpoint of the same "
            f"model, or change model.name/num_classes to match it.")


def load_model_weights(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """Check the architecture and load the checkpoint's weights into ``model``, or explain why not."""
    check_model_matches(ckpt, model.model_name, model.num_classes)
    try:
        model.load_state_dict(ckpt.section("model"))
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint '{ckpt.path}' does not fit model '{model.model_name}': "
                              f"{str(err).splitlines()[0]}") from None
