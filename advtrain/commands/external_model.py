"""``advtrain eval --arch``: the model and data of an evaluation of weights advtrain did not train.

Such weights carry no recipe, so what an advtrain checkpoint records is stated instead, on the
command line or in a small *model card* (``--model-card card.yaml``; flags override its keys)::

    # card.yaml — a timm ResNet-10 trained elsewhere, ℓ∞ 8/255, CIFAR-10 statistics
    model: {arch: timm:resnet10t, weights: resnet10t_c10.safetensors, num_classes: 10,
            mean: [0.4914, 0.4822, 0.4465], std: [0.2471, 0.2435, 0.2616]}
    threat: {norm: linf, eps: 8/255}
    data: {name: arrays, path: cifar10.npz}

The threat model is required (it is the default ε of every attack and the "trained against" line
of the report), and so is the normalisation: a list of per-channel values, ``none`` for a model
that takes [0, 1] images as they are, or ``dataset`` for the data's own statistics. The card is
read as plain YAML data and validated like a recipe (every problem at once, by key path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from advtrain.config.read import apply_overrides
from advtrain.data import DATASETS, DataBundle
from advtrain.errors import RecipeError, UserError
from advtrain.params import param
from advtrain.params.check import check_params

CARD_SECTIONS = ("model", "threat", "data")
NORMALISATION_WORDS = ("none", "dataset")


@dataclass
class CardModel:
    """The ``model`` section of a model card."""

    arch: str = param(help="timm:NAME, torchvision:NAME, or a timm NAME")
    weights: str = param(path=True, help="a .safetensors state dict of that network")
    mean: Any = param(help="per-channel mean the model was trained with (--mean): numbers, 'none' or 'dataset'")
    std: Any = param(help="per-channel std the model was trained with (--std): numbers, 'none' or 'dataset'")
    num_classes: int | None = param(None, gt=0, le=100_000, help="classes of the last layer (null: the data's)")


@dataclass
class CardThreat:
    """The ``threat`` section: the ball the model claims robustness in."""

    norm: str = param(choices=("linf", "l2"), help="linf or l2")
    eps: float = param(ge=0, le=1000, help="radius in pixel units, e.g. 8/255")


@dataclass
class ExternalModel:
    """What :func:`load_external` hands to the evaluation."""

    data: DataBundle
    model: nn.Module
    dataset: str
    norm: str
    eps: float
    eps_text: str
    normalisation: str
    meta: dict[str, Any] = field(default_factory=dict)


def card_from_cli(card: Path | None, *, weights: Path | None, arch: str | None, threat: str | None,
                  mean: str | None, std: str | None, num_classes: int | None,
                  data_overrides: list[str]) -> dict[str, Any]:
    """The model card as plain data: the file's (if any), then the flags written over it."""
    values: dict[str, Any] = read_card(card) if card is not None else {}
    flags = []
    if weights is not None:
        flags.append(f"model.weights={weights}")
    for key, value in (("arch", arch), ("num_classes", num_classes)):
        if value is not None:
            flags.append(f"model.{key}={value}")
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            values.setdefault("model", {})
            if not isinstance(values["model"], dict):
                break
            values["model"][key] = _channel_values(value, f"--{key}")
    if threat is not None:
        norm, at, eps = threat.partition("@")
        if not at or not norm.strip() or not eps.strip():
            raise UserError(f"--threat '{threat}': write NORM@EPS, e.g. --threat linf@8/255 or --threat l2@0.5")
        flags += [f"threat.norm={norm.strip()}", f"threat.eps={eps.strip()}"]
    flags += [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
    return apply_overrides(values, flags) if flags else values


def card_weights(values: dict[str, Any]) -> Path:
    """The weights path a card names (the card's checks report it when absent)."""
    model = values.get("model")
    weights = model.get("weights") if isinstance(model, dict) else None
    return Path(str(weights)) if weights is not None else Path("(no weights given)")


def read_card(path: Path) -> dict[str, Any]:
    """A model card file as plain data (``yaml.safe_load``: no tags, no interpolation)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--model-card '{path}': cannot read it ({getattr(err, 'strerror', None) or err}).") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError([f"not valid YAML: {str(err).splitlines()[0]}"], str(path)) from None
    if not isinstance(values, dict):
        raise RecipeError(["a model card is a mapping with sections model, threat, data"], str(path))
    return values


def _channel_values(text: str, flag: str) -> Any:
    """``0.5,0.5,0.5`` → [0.5, 0.5, 0.5]; ``none`` / ``dataset`` stay words."""
    word = text.strip().lower()
    if word in NORMALISATION_WORDS:
        return word
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} '{text}': give comma-separated numbers (one per channel, e.g. "
                        f"0.4914,0.4822,0.4465), 'none' or 'dataset'") from None


def check_card(values: dict[str, Any], source: str) -> tuple[CardModel, CardThreat, str, Any]:
    """Every problem of a model card at once; (model, threat, data name, data params)."""
    problems: list[str] = []
    for key in values:
        if key not in CARD_SECTIONS:
            problems.append(f"{key}: not a model-card section (valid: {', '.join(CARD_SECTIONS)})")
    sections, present = {}, set()
    for name in CARD_SECTIONS:
        section = values.get(name)
        if isinstance(section, dict):
            present.add(name)
        else:
            hint = {"model": "--arch and the weights path", "threat": "--threat linf@8/255",
                    "data": "--data name=... (e.g. --data name=arrays --data path=c10.npz)"}[name]
            problems.append(f"{name}: missing (an external model records nothing; give {hint})")
            section = {}
        sections[name] = section
    model = threat = None
    if "model" in present:
        model = check_params(CardModel, sections["model"], "model", "a model card's model", problems)
    if "threat" in present:
        threat = check_params(CardThreat, sections["threat"], "threat", "a model card's threat", problems)
    for key in ("mean", "std"):
        value = sections["model"].get(key)
        if value is not None and not _is_channel_values(value):
            problems.append(f"model.{key}: expected a list of numbers, 'none' or 'dataset', got {value!r}")
    data = sections["data"]
    data_name, data_params = data.get("name"), None
    if sections["data"] and data_name not in DATASETS:
        problems.append(f"data.name: {DATASETS.unknown_message(data_name)}")
    elif data_name is not None:
        entry = DATASETS.get(data_name)
        data_params = check_params(entry.params, {k: v for k, v in data.items() if k != "name"}, "data",
                                   f"data '{data_name}'", problems)
    if problems:
        raise RecipeError(problems, source=source)
    return model, threat, str(data_name), data_params


def _is_channel_values(value: Any) -> bool:
    if isinstance(value, str):
        return value in NORMALISATION_WORDS
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def normalisation(model: CardModel, data: DataBundle) -> tuple[tuple, tuple, str]:
    """(mean, std, how it was chosen) for the data's channels."""
    channels = data.image_shape[0]
    out = []
    for key in ("mean", "std"):
        value = getattr(model, key)
        if value == "none":
            out.append((0.0,) * channels if key == "mean" else (1.0,) * channels)
        elif value == "dataset":
            out.append(tuple(getattr(data, key)))
        else:
            if len(value) != channels:
                raise UserError(f"model.{key} has {len(value)} value(s) but the data has {channels} channel(s)")
            out.append(tuple(float(v) for v in value))
    if min(out[1]) <= 0:
        raise UserError(f"model.std must be positive, got {out[1]}")
    words = {model.mean, model.std} if isinstance(model.mean, str) and isinstance(model.std, str) else set()
    how = f"mean {list(out[0])}, std {list(out[1])}" + (f" ({'/'.join(sorted(words))})" if words else "")
    return out[0], out[1], how


def load_external(values: dict[str, Any], source: str, device: torch.device) -> ExternalModel:
    """Validate the card, build its data and its model (weights checked and loaded), in eval mode."""
    from advtrain.build import building
    from advtrain.config.data_checks import check_model_takes
    from advtrain.models.external import external_classifier, parse_arch

    spec, threat, data_name, data_params = check_card(values, source)
    arch = parse_arch(spec.arch)
    with building("data", data_name):
        data = DATASETS.get(data_name).build(data_params)
    num_classes = spec.num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise UserError(f"model.num_classes={num_classes} but data '{data_name}' has {data.num_classes} classes")
    mean, std, how = normalisation(spec, data)
    model = external_classifier(arch, Path(spec.weights), num_classes=num_classes, in_chans=data.image_shape[0],
                                mean=mean, std=std)
    check_model_takes(model, arch.label, data.image_shape, num_classes)
    eps_text = str(values["threat"]["eps"]).strip()
    return ExternalModel(data=data, model=model.to(device).eval(), dataset=data_name, norm=threat.norm,
                         eps=float(threat.eps), eps_text=eps_text, normalisation=how,
                         meta={"kind": "external", "arch": arch.label, "weights": str(spec.weights)})
