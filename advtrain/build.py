"""Build the components a recipe names. Each ``build_*`` returns one object.

Every builder runs inside :func:`building`, the last line of defence: whatever a component (or
the third-party code under it) raises while being built from the recipe becomes a
:class:`BuildError` naming the section and the component, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from advtrain.config.load import Recipe
from advtrain.errors import RecipeError, UserError


class BuildError(UserError):
    """A component failed to build from the recipe with an exception it did not explain itself."""

    title = "cannot build a component"


@contextmanager
def building(section: str, name: str) -> Iterator[None]:
    """Turn any non-user error raised while building ``section`` '``name``' into a :class:`BuildError`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the point: no third-party failure reaches the user raw
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise BuildError(
            f"building {section} '{name}' failed: {type(err).__name__}: {detail}. A value of the {section} "
            f"section is most likely one this component cannot handle; compare it with `advtrain list` and "
            f"the component's documentation (run with --debug to see the traceback).") from err


def build_data(recipe: Recipe) -> Any:
    """The dataset bundle (train/val/test sources plus shape, classes and loader settings)."""
    from advtrain.data import DATASETS

    data = recipe.components["data"]
    with building("data", data.name):
        return DATASETS.get(data.name).constructor(data.params)


def build_model_for(recipe: Recipe, data: Any, *, weights_from_checkpoint: bool = False) -> nn.Module:
    """The classifier, with the dataset's normalisation as its first module.

    ``weights_from_checkpoint``: the caller loads a checkpoint's weights next, so ``pretrained`` is
    ignored (a recipe stored in a downloaded checkpoint never makes timm fetch anything).
    A one-image forward pass checks that the model takes the data's image size and class count.
    """
    from advtrain.models import build_model

    spec = recipe.components["model"].params
    num_classes = spec.num_classes if spec.num_classes is not None else data.num_classes
    if num_classes != data.num_classes:
        raise RecipeError([f"model.num_classes: {num_classes} but dataset '{recipe.components['data'].name}' "
                           f"has {data.num_classes} classes; remove model.num_classes or set it to "
                           f"{data.num_classes}"], source=recipe.source)
    with building("model", spec.name):
        model = build_model(spec.name, num_classes=num_classes, in_chans=data.image_shape[0], mean=data.mean,
                            std=data.std, pretrained=spec.pretrained and not weights_from_checkpoint,
                            **dict(spec.kwargs))
    _check_model_takes(model, spec.name, data.image_shape, num_classes)
    return model


def _check_model_takes(model: nn.Module, name: str, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """One zero image through the model (eval mode, no grad), before anything trains or attacks it."""
    c, h, w = image_shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as err:  # noqa: BLE001 - any shape failure inside the network
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"model '{name}' cannot take the data's {c}×{h}×{w} images ({type(err).__name__}: "
                        f"{detail}); pick a model made for this image size (small_cnn for 8×8 or 28×28, "
                        f"*_cifar models for 32×32) or change the data's image size") from err
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, num_classes):
        raise UserError(f"model '{name}' maps a {c}×{h}×{w} image to outputs of shape {tuple(out.shape)[1:]}, "
                        f"not ({num_classes},) class scores; pick another model")


def build_objective(recipe: Recipe) -> Any:
    """The training objective, bound to its attack."""
    from advtrain.attacks import ATTACKS
    from advtrain.objectives import OBJECTIVES

    objective, attack = recipe.components["objective"], recipe.components["attack"]
    with building("objective", objective.name):
        built = ATTACKS.get(attack.name).build(attack.params) if attack is not None else None
        return OBJECTIVES.get(objective.name).build(objective.params, attack=built)


def build_selection_objective(recipe: Recipe, objective: Any) -> Any:
    """The objective the selection pass attacks with: ``objective`` itself, or, with
    ``selector.attack``, the same objective bound to that (cheaper) attack."""
    from advtrain.attacks import ATTACKS
    from advtrain.objectives import OBJECTIVES

    spec = getattr(recipe.components["selector"].params, "attack", None)
    if spec is None:
        return objective
    values = dict(spec)
    entry = ATTACKS.get(values.pop("name"))
    section = recipe.components["objective"]
    return OBJECTIVES.get(section.name).build(section.params, attack=entry.build(entry.params(**values)))


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    from advtrain.train.optim import OPTIMIZERS

    optim = recipe.components["optim"]
    with building("optim", optim.name):
        return OPTIMIZERS.get(optim.name).constructor(optim.params, model)


def build_lr_schedule(recipe: Recipe) -> Any:
    from advtrain.train.lr import LR_SCHEDULES

    sched = recipe.components["lr_schedule"]
    with building("lr_schedule", sched.name):
        return LR_SCHEDULES.get(sched.name).constructor(sched.params)


def build_eval_attacks(names: list[str], **overrides: Any) -> list[Any]:
    from advtrain.attacks.presets import resolve_eval_attacks

    with building("eval", ", ".join(names)):
        return resolve_eval_attacks(names, **overrides)


def check_selector_fits(recipe: Recipe, data: Any) -> None:
    """Refuse per-class batch-wise selection when a class is smaller than one candidate batch."""
    params = recipe.components["selector"].params
    if params is None or not getattr(params, "per_class", False) or getattr(params, "granularity", "") != "batch":
        return
    size = params.batch_size or data.batch_size
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
    small = [(c, n) for c, n in enumerate(counts) if 0 < n < size]
    if small:
        c, n = small[0]
        raise RecipeError([
            f"selector.batch_size {size} is larger than class {c} ({n} training samples): per-class "
            f"batch-wise selection needs at least one full batch per class; lower selector.batch_size "
            f"(it defaults to data.batch_size) or set selector.per_class=false"], source=recipe.source)


def move_data_to_device(data: Any, device: torch.device, max_bytes: int = 8 * 2**30) -> Any:
    """Keep in-memory splits on the GPU (uint8) when they fit in ``max_bytes``; folders stay on disk."""
    import dataclasses

    from advtrain.data import ArraySource

    moved = {}
    for split in ("train", "val", "test"):
        source = getattr(data, split)
        if isinstance(source, ArraySource) and source.images.numel() <= max_bytes:
            moved[split] = source.to_device(device)
    return dataclasses.replace(data, **moved) if moved else data
