"""The Python API: a trained model back as a plain ``nn.Module``, with no dataset and no CLI.

    import advtrain
    model = advtrain.load("runs/cifar10_linf/best.safetensors")   # eval mode, on the CPU
    logits = model(images)                                        # images in [0, 1], N×C×H×W

The module takes images in [0, 1]: the training data's mean/std are its first layer (buffers
restored from the checkpoint), so no preprocessing but resizing is needed. It is built from the
checkpoint's own metadata (architecture, classes, channels, the ``model.kwargs`` of its stored
recipe, checked against the allow-list), never from timm's pretrained weights, and its tensors
are read with safetensors, never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from advtrain.errors import CheckpointError

__all__ = ["load"]


def load(checkpoint: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an advtrain checkpoint, weights loaded, in eval mode.

    Args:
        checkpoint: A ``.safetensors`` file written by ``advtrain run`` (``last``, ``best`` or
            ``epoch_XXX``).
        device: Where to put the model.

    Returns:
        An :class:`advtrain.models.Classifier`: ``model(x)`` gives logits for images in [0, 1];
        ``model.normalize`` holds the mean/std, ``model.net`` the timm network,
        ``model.model_name`` its name.

    Raises:
        CheckpointError: The file is missing, not an advtrain checkpoint, damaged, or its weights
            do not fit the architecture it names.
    """
    from advtrain.io import checkpoint as ckpt_io
    from advtrain.models import build_model, model_kwargs_problems

    ckpt = ckpt_io.load(checkpoint)
    meta = ckpt.meta
    kwargs = _model_kwargs(ckpt.recipe_yaml, ckpt.path)
    problems = model_kwargs_problems(kwargs)
    if problems:
        raise CheckpointError(f"checkpoint '{ckpt.path}': its stored recipe's model.kwargs are refused: "
                              + "; ".join(problems))
    in_chans = int(meta["in_chans"])
    # The normalisation tensors' headers are checked before they are read (model tensors are read on demand).
    sizes = [ckpt.headers.get(f"model.normalize.{k}", (None, ()))[1] for k in ("mean", "std")]
    if any(len(shape) < 1 or int(torch.tensor(shape).prod()) != in_chans for shape in sizes):
        raise CheckpointError(f"checkpoint '{ckpt.path}' has no normalisation for its {in_chans} channel(s) "
                              "(tensors 'model.normalize.mean' and 'model.normalize.std'); it was not written "
                              "by advtrain run.")
    norm = ckpt.section("model.normalize")
    mean, std = norm["mean"], norm["std"]
    model = build_model(str(meta["model_name"]), num_classes=int(meta["num_classes"]), in_chans=in_chans,
                        mean=tuple(mean.flatten().tolist()), std=tuple(std.flatten().tolist()), pretrained=False,
                        **kwargs)
    ckpt_io.load_model_weights(ckpt, model)
    return model.to(device).eval()


def _model_kwargs(recipe_yaml: str, path: Path) -> dict:
    """``model.kwargs`` of the stored recipe (plain YAML data, as advtrain wrote it)."""
    from advtrain.config.load import MAX_STORED_RECIPE

    if len(recipe_yaml) > MAX_STORED_RECIPE:
        raise CheckpointError(f"checkpoint '{path}': its stored recipe is {len(recipe_yaml)} characters; advtrain "
                              "writes a few kilobytes, so this file was not written by advtrain.")
    try:
        recipe = yaml.safe_load(recipe_yaml) or {}
    except yaml.YAMLError:
        raise CheckpointError(f"checkpoint '{path}': its stored recipe is not valid YAML.") from None
    model = recipe.get("model") if isinstance(recipe, dict) else None
    kwargs = model.get("kwargs") if isinstance(model, dict) else None
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"checkpoint '{path}': its stored recipe's model.kwargs is not a mapping.")
    return kwargs
