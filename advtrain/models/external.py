"""Weights advtrain did not write: a timm or torchvision architecture plus a safetensors state dict.

Used by ``advtrain eval --arch`` (evaluate someone else's model), ``model.weights`` (start training
from local weights) and :func:`advtrain.load`. Everything goes through safetensors: this module
never calls ``torch.load`` (a pickle) and never asks timm or torchvision for pretrained weights
(``pretrained=False`` / ``weights=None``), so nothing is unpickled and nothing is downloaded.

A weights file is accepted in three layouts, recognised from its tensor names: the bare network's
``state_dict()`` (what ``safetensors.torch.save_file(net.state_dict(), ...)`` writes), an advtrain
model's (``net.*`` plus ``normalize.*``) and an advtrain checkpoint (``model.net.*``); a
DistributedDataParallel ``module.`` prefix is dropped. Every tensor is checked against the
network before anything is copied: missing and unexpected names, shapes, finiteness. Floating
tensors of another precision (fp16/bf16 releases) are converted to the network's, which is the
one conversion done; anything else that differs is refused with both sides named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from advtrain.errors import UserError, did_you_mean
from advtrain.models.classifier import Classifier

ARCH_SOURCES = ("timm", "torchvision")
#: Tensors larger than this in total are not a classifier's weights advtrain can take.
MAX_WEIGHTS_BYTES = 8 * 2**30


class WeightsError(UserError):
    """A weights file that cannot be read or does not fit the network."""

    title = "weights do not fit"


@dataclass(frozen=True)
class Arch:
    """An architecture named ``timm:NAME``, ``torchvision:NAME`` or a bare timm ``NAME``."""

    source: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.source}:{self.name}"


def parse_arch(text: str) -> Arch:
    """``timm:resnet10t`` / ``torchvision:resnet18`` / ``resnet10t`` (timm), checked against the library."""
    source, _, name = text.strip().rpartition(":")
    source = source or "timm"
    if source not in ARCH_SOURCES:
        raise UserError(f"--arch '{text}': unknown source '{source}'{did_you_mean(source, ARCH_SOURCES)}; "
                        f"write timm:NAME or torchvision:NAME")
    if source == "timm":
        from advtrain.models import MODELS

        if name not in MODELS:
            raise UserError(f"--arch '{text}': {MODELS.unknown_message(name)}")
    else:
        names = torchvision_classifiers()
        if name not in names:
            raise UserError(f"--arch '{text}': torchvision has no classification model '{name}'"
                            f"{did_you_mean(name, names)} (see torchvision.models.list_models(torchvision.models))")
    return Arch(source, name)


def torchvision_classifiers() -> list[str]:
    """torchvision's image-classification model names (not detection, segmentation or video)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class ExternalClassifier(Classifier):
    """``normalize`` then a network from another library; evaluation needs no timm head API.

    Selection features (``embed``, ``last_linear``) exist only for timm networks.
    """

    def __init__(self, net: nn.Module, mean: tuple, std: tuple, model_name: str, num_classes: int) -> None:
        super().__init__(net, mean, std, model_name=model_name)
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        return self._num_classes


def build_network(arch: Arch, *, num_classes: int, in_chans: int) -> nn.Module:
    """The architecture with fresh weights; never a download."""
    if arch.source == "timm":
        import timm

        return timm.create_model(arch.name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    import torchvision

    if in_chans != 3:
        raise UserError(f"--arch {arch.label}: torchvision's classifiers take 3-channel images, the data has "
                        f"{in_chans}; use a timm architecture (it adapts the stem) or 3-channel data")
    try:
        return torchvision.models.get_model(arch.name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as err:
        raise UserError(f"--arch {arch.label}: torchvision cannot build it with {num_classes} classes "
                        f"({err})") from None


def external_classifier(arch: Arch, weights: Path, *, num_classes: int, in_chans: int, mean: tuple,
                        std: tuple) -> ExternalClassifier:
    """``arch`` with the weights of ``weights`` and the given normalisation, in eval mode."""
    net = build_network(arch, num_classes=num_classes, in_chans=in_chans)
    load_weights(net, weights, owner=f"--arch {arch.label}")
    return ExternalClassifier(net, mean, std, model_name=arch.label, num_classes=num_classes).eval()


# --------------------------------------------------------------------------------------- weights
def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; anything else is refused (never unpickled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist; give the path of a .safetensors file "
                           f"(a state dict saved with safetensors.torch.save_file).")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"weights file '{path}' is {size / 2**30:.1f} GiB, more than the "
                           f"{MAX_WEIGHTS_BYTES // 2**30} GiB a classifier's weights need.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(
            f"'{path}' is not a readable safetensors file ({first}). advtrain reads weights only as "
            f".safetensors and never unpickles .pt/.pth/.bin files; convert one you trust yourself (the "
            f"README, 'Models in and out', shows the one-line conversion with safetensors.torch.save_file).") from None
    return tensors, meta


def network_state(tensors: dict[str, Tensor], meta: dict[str, str]) -> dict[str, Tensor]:
    """The bare network's tensors from any of the accepted layouts (see the module docstring)."""
    if "advtrain" in meta:  # an advtrain checkpoint: its model section
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if tensors and all(k.startswith("net.") or k.startswith("normalize.") for k in tensors):
        tensors = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def weight_problems(theirs: dict[str, Tensor], ours: dict[str, Tensor]) -> list[str]:
    """One line per tensor that is missing, unexpected, of another shape or kind, or not finite."""
    problems = [f"tensor '{k}' is missing from the file" for k in ours if k not in theirs]
    problems += [f"tensor '{k}' is not part of the network" for k in theirs if k not in ours]
    for key in ours.keys() & theirs.keys():
        a, b = theirs[key], ours[key]
        if tuple(a.shape) != tuple(b.shape):
            problems.append(f"tensor '{key}' has shape {tuple(a.shape)} in the file but the network expects "
                            f"{tuple(b.shape)}")
        elif a.is_floating_point() != b.is_floating_point() or (not a.is_floating_point() and a.dtype != b.dtype):
            problems.append(f"tensor '{key}' is {str(a.dtype).replace('torch.', '')} in the file but the network "
                            f"expects {str(b.dtype).replace('torch.', '')}")
        elif a.is_floating_point() and not bool(torch.isfinite(a).all()):
            problems.append(f"tensor '{key}' holds non-finite values (NaN or inf)")
    return sorted(problems)


def load_weights(net: nn.Module, path: Path, *, owner: str) -> None:
    """Check every tensor of the safetensors file ``path`` against ``net``, then copy them in."""
    tensors, meta = read_safetensors(path)
    theirs = network_state(tensors, meta)
    ours = net.state_dict()
    problems = weight_problems(theirs, ours)
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        hint = " (num_classes or the architecture differs)" if any("shape" in p for p in problems) else ""
        raise WeightsError(f"weights '{path}' do not fit {owner}{hint}: {len(problems)} problem(s):\n  - "
                           + "\n  - ".join(problems[:10]) + more)
    net.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})
