"""Models: timm's registry is the model list; our small-image architectures are registered into it.

``MODELS`` answers the recipe validator's and ``advtrain list``'s questions from timm's registry
(is a name known, the did-you-mean hint, the params of a model section) and
``MODELS.get(name).build(params, num_classes=..., in_chans=..., mean=..., std=...)`` returns a
:class:`Classifier` (normalisation + timm network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from advtrain.errors import UserError, did_you_mean
from advtrain.models import cifar
from advtrain.models.classifier import Classifier, Normalize
from advtrain.params import param
from advtrain.registry import Entry, UnknownComponentError

__all__ = ["MODEL_KWARGS", "MODELS", "Classifier", "ModelCatalog", "ModelParams", "Normalize", "build_model",
           "is_known_model", "model_kwargs_problems"]

_RATE = (float, 0.0, 0.99)
#: The only ``model.kwargs`` passed on to ``timm.create_model``: architecture knobs, as (type, low,
#: high) or (str, choices). Nothing that names a file, a URL or a hub id (``checkpoint_path``,
#: ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``, ...) can get through, so a shared
#: recipe or the recipe stored in a downloaded checkpoint never makes timm read or fetch a file.
MODEL_KWARGS: dict[str, tuple] = {
    "drop_rate": _RATE, "drop_path_rate": _RATE, "drop_block_rate": _RATE, "proj_drop_rate": _RATE,
    "attn_drop_rate": _RATE, "pos_drop_rate": _RATE, "patch_drop_rate": _RATE,
    "norm": (bool,),
    "stem_width": (int, 1, 4096),
    "img_size": (int, 1, 4096),
    "global_pool": (str, ("avg", "max", "avgmax", "catavgmax", "fast", "token", "map", "")),
    "act_layer": (str, ("relu", "gelu", "silu", "swish", "mish", "elu", "leaky_relu", "tanh", "sigmoid",
                        "hard_swish", "hard_sigmoid", "prelu", "relu6")),
}


def model_kwargs_problems(kwargs: dict) -> list[str]:
    """``kwargs.KEY: why`` for every entry of ``model.kwargs`` outside :data:`MODEL_KWARGS`."""
    problems = []
    for key, value in kwargs.items():
        rule = MODEL_KWARGS.get(str(key))
        if rule is None:
            problems.append(
                f"kwargs.{key}: not an allowed timm argument{did_you_mean(str(key), MODEL_KWARGS)} (allowed: "
                f"{', '.join(MODEL_KWARGS)}); arguments that name a file, URL or hub id (checkpoint_path, "
                "pretrained_cfg, ...) are refused so a recipe never loads weights from a path")
            continue
        kind = rule[0]
        ok_type = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type, value = True, float(value)
        if not ok_type:
            problems.append(f"kwargs.{key}: expected {kind.__name__}, got {value!r}")
        elif kind is str and value not in rule[1]:
            problems.append(f"kwargs.{key}: must be one of {', '.join(map(repr, rule[1]))}, got {value!r}")
        elif kind in (int, float) and not rule[1] <= value <= rule[2]:
            problems.append(f"kwargs.{key}: must be in [{rule[1]}, {rule[2]}], got {value}")
    return problems


@dataclass
class ModelParams:
    """Parameters of the ``model`` section (shared by every model name)."""

    name: str = param(help="a registered model (advtrain list models) or any timm model name")
    num_classes: int | None = param(None, gt=0, le=100_000, help="classes of the last layer; null = the dataset's")
    pretrained: bool = param(False, help="load timm's pretrained weights (downloads once into the HF cache)")
    weights: str | None = param(None, path=True,
                                help="start from local weights: a .safetensors state dict of this network "
                                     "(names and shapes checked; never a pickle, never a download)")
    kwargs: dict = param({}, help="extra keyword arguments for timm.create_model, e.g. {drop_rate: 0.1} "
                                  "(an allow-list: see advtrain.models.MODEL_KWARGS)")

    def problems(self) -> list[str]:
        """Rules beyond the field types: the allow-list of ``kwargs``, one source of starting weights."""
        problems = model_kwargs_problems(self.kwargs)
        if self.weights is not None and self.pretrained:
            problems.append("weights: model.weights and model.pretrained=true both give starting weights; "
                            "keep one (model.pretrained=false to start from the file)")
        if self.weights is not None and not str(self.weights).endswith(".safetensors"):
            problems.append(f"weights: '{self.weights}' is not a .safetensors file; advtrain reads local weights "
                            "only as safetensors (never .pt/.pth pickles)")
        return problems


def classifier(params: ModelParams, *, num_classes: int, in_chans: int, mean: tuple, std: tuple,
               pretrained: bool | None = None) -> Classifier:
    """The model a ``model`` section names, for data of ``in_chans`` channels and ``num_classes`` classes.

    ``pretrained`` None follows ``params.pretrained``; False never loads weights (e.g. when a
    checkpoint's weights are loaded next, or when validation only checks the architecture).
    """
    load = params.pretrained if pretrained is None else pretrained
    return build_model(params.name, num_classes=num_classes, in_chans=in_chans, mean=mean, std=std,
                       pretrained=load, **dict(params.kwargs))


class ModelCatalog:
    """timm's model registry seen as a component registry (every entry takes :class:`ModelParams`).

    Any ``timm.list_models()`` name (or ``arch.tag``) is a model; :meth:`names` lists the ones
    advtrain registers into timm (``advtrain list models``).
    """

    kind = "model"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and timm.is_model(name)

    def get(self, name: str) -> Entry:
        """The entry for ``name``; raises with the did-you-mean hint when timm does not know it."""
        if name not in self:
            raise UnknownComponentError(self.unknown_message(name))
        return Entry(name, classifier, ModelParams, cifar.SUMMARIES.get(name, "a timm model"))

    def unknown_message(self, name: object) -> str:
        """The message for an unknown model name: the closest of ours, else of timm's."""
        hint = did_you_mean(str(name), self.names()) or did_you_mean(str(name), timm.list_models())
        return (f"unknown model '{name}'{hint} (advtrain's: {', '.join(self.names())}; any timm model name "
                "also works, see timm.list_models())")

    def names(self) -> list[str]:
        """The architectures advtrain registers into timm, sorted."""
        return sorted(cifar.NAMES)

    def entries(self) -> list[Entry]:
        """Entries of :meth:`names`."""
        return [self.get(n) for n in self.names()]


MODELS = ModelCatalog()


def is_known_model(name: str) -> bool:
    """True for any architecture (or ``arch.tag``) in timm's registry, ours included."""
    return name in MODELS


def build_model(name: str, *, num_classes: int, in_chans: int, mean: tuple, std: tuple,
                pretrained: bool = False, **kwargs: Any) -> Classifier:
    """Build ``name`` with timm and wrap it with the dataset's normalisation.

    Args:
        name: Any timm model name (ours are registered into timm).
        num_classes: Size of the last layer.
        in_chans: Input channels (the dataset's; timm adapts pretrained stems).
        mean: Per-channel mean used to normalise inputs in [0,1].
        std: Per-channel standard deviation.
        pretrained: Load timm's pretrained weights. A failed download is an error, never a silent
            fallback to random weights.
        **kwargs: Extra ``timm.create_model`` arguments, only those in :data:`MODEL_KWARGS`.

    Raises:
        UserError: Unknown name, wrong mean/std length, unsupported kwargs, missing weights, or a
            network whose last layer is not an ``nn.Linear``.
    """
    if not is_known_model(name):
        raise UserError(MODELS.unknown_message(name))
    refused = model_kwargs_problems(kwargs)
    if refused:
        raise UserError(f"model '{name}': " + "; ".join(f"model.{p}" for p in refused))
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"model '{name}': the data has {in_chans} channel(s) but mean/std have "
                        f"{len(mean)}/{len(std)} values")
    if pretrained and name not in cifar.NAMES and not timm.models.is_model_pretrained(name):
        raise UserError(f"timm has no pretrained weights for '{name}'; set model.pretrained=false or pick a "
                        "name from timm.list_models(pretrained=True)")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                **kwargs)
    except UserError:
        raise
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise UserError(f"model '{name}' rejects one of model.kwargs {sorted(kwargs)}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any download/cache failure of the weights
        if not pretrained:
            raise
        raise UserError(f"could not load pretrained weights for '{name}' ({type(err).__name__}: {err}). timm "
                        "fetches them from the Hugging Face Hub into its cache (~/.cache/huggingface); run "
                        "once with network access or copy that cache here, or set model.pretrained=false "
                        "to train from scratch") from err
    head = net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise UserError(f"model '{name}' ends in {type(head).__name__}, not a single nn.Linear; "
                        "advtrain's coreset selection needs a linear last layer — pick another model")
    return Classifier(net, mean, std, model_name=name)
