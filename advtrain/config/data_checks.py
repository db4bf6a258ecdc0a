"""The recipe checked against its data: the rules that need cheap facts of the dataset.

Runs after :func:`advtrain.config.validate.validate` and before anything trains: the dataset is
opened only as far as :mod:`advtrain.data.facts` must (headers, labels, a folder listing), and
the model is built once on the CPU, without pretrained weights, to push one zero image through.
Problems are raised together as one :class:`~advtrain.errors.RecipeError`; a dataset that is
missing or malformed raises its own :class:`~advtrain.errors.DataError`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advtrain.config.recipe import Recipe
from advtrain.config.sections import SECTION_REGISTRIES
from advtrain.data.facts import DataFacts, data_facts
from advtrain.errors import RecipeError, UserError
from advtrain.runtime.modes import eval_mode


def check_against_data(recipe: Recipe) -> DataFacts | None:
    """Refuse a recipe whose model or selector does not fit its dataset; return the data's facts."""
    data = recipe.components["data"]
    facts = data_facts(data.name, data.params)
    if facts is None:
        return None
    problems: list[str] = []
    model = recipe.components["model"].params
    mismatch = num_classes_problem(model.num_classes, data.name, facts.num_classes)
    if mismatch:
        problems.append(mismatch)
    if facts.train_counts is not None:
        too_large = selector_fit_problem(recipe.components["selector"].params, facts.train_counts,
                                         data.params.batch_size)
        if too_large:
            problems.append(too_large)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    net = _architecture(model, facts)
    check_model_takes(net, model.name, facts.image_shape, facts.num_classes)
    return facts


def num_classes_problem(requested: int | None, dataset: str, num_classes: int) -> str | None:
    """``model.num_classes`` that disagrees with the dataset's classes, worded for the recipe."""
    if requested is None or requested == num_classes:
        return None
    return (f"model.num_classes: {requested} but dataset '{dataset}' has {num_classes} classes; remove "
            f"model.num_classes or set it to {num_classes}")


def selector_fit_problem(params: Any, train_counts: list[int] | tuple[int, ...], data_batch_size: int) -> str | None:
    """Per-class batch-wise selection needs one full candidate batch in every (non-empty) class."""
    if params is None or not getattr(params, "per_class", False) or getattr(params, "granularity", "") != "batch":
        return None
    size = params.batch_size or data_batch_size
    small = [(c, n) for c, n in enumerate(train_counts) if 0 < n < size]
    if not small:
        return None
    c, n = small[0]
    return (f"selector.batch_size {size} is larger than class {c} ({n} training samples): per-class "
            f"batch-wise selection needs at least one full batch per class; lower selector.batch_size "
            f"(it defaults to data.batch_size) or set selector.per_class=false")


def _architecture(params: Any, facts: DataFacts) -> nn.Module:
    """The recipe's model on the CPU with random weights (never downloads), for the shape check."""
    c = facts.image_shape[0]
    entry = SECTION_REGISTRIES["model"].get(params.name)
    try:
        return entry.build(params, num_classes=facts.num_classes, in_chans=c, mean=(0.5,) * c, std=(0.5,) * c,
                           pretrained=False)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever timm raises for these arguments, in recipe terms
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"model '{params.name}' cannot be built for {facts.num_classes} classes and "
                        f"{c}-channel images ({type(err).__name__}: {detail}); check model.kwargs or pick "
                        "another model") from err


def check_model_takes(model: nn.Module, name: str, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """One zero image through the model (eval mode, no grad), before anything trains or attacks it."""
    c, h, w = image_shape
    try:
        with eval_mode(model), torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as err:  # noqa: BLE001 - any shape failure inside the network
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"model '{name}' cannot take the data's {c}×{h}×{w} images ({type(err).__name__}: "
                        f"{detail}); pick a model made for this image size (small_cnn for 8×8 or 28×28, "
                        f"*_cifar models for 32×32) or change the data's image size") from err
    if tuple(out.shape) != (1, num_classes):
        raise UserError(f"model '{name}' maps a {c}×{h}×{w} image to outputs of shape {tuple(out.shape)[1:]}, "
                        f"not ({num_classes},) class scores; pick another model")
