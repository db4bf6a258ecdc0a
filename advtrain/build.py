"""Build the components a recipe names: the one place anything is instantiated from a recipe.

:func:`build_run` returns every component of a training run (the trainer and ``advtrain
select`` use it), :func:`build_evaluation` the data and model of a checkpoint (``advtrain
eval``). Each ``build_*`` below makes one component through its registry entry,
``REGISTRY.get(name).build(params, **deps)``. Every builder runs inside :func:`building`, the last
line of defence: whatever a component (or the third-party code under it) raises while being
built from the recipe becomes a :class:`BuildError` naming the section and the component, never a
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.config.data_checks import check_model_takes, num_classes_problem, selector_fit_problem
from advtrain.config.recipe import Recipe
from advtrain.data import DATASETS, DataBundle
from advtrain.errors import RecipeError, UserError
from advtrain.io import checkpoint as ckpt_io
from advtrain.models import MODELS
from advtrain.objectives import Objective
from advtrain.optim import LR_SCHEDULES, OPTIMIZERS, LrFn
from advtrain.runtime.device import keeps_data_on_device, prefers_channels_last
from advtrain.selection import SELECTORS
from advtrain.selection.selectors import Selector


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


@dataclass
class RunComponents:
    """Everything a training run is made of, built from its recipe (the model on its device)."""

    data: DataBundle
    model: nn.Module
    objective: Objective
    selection_objective: Objective
    selector: Selector
    optimizer: torch.optim.Optimizer
    lr_factor: LrFn
    #: Each parameter group's peak learning rate; a step's lr is ``base · lr_factor(epoch, epochs)``.
    base_lrs: list[float]
    eval_attacks: list[Any]


@dataclass
class EvalComponents:
    """What evaluating a checkpoint needs: its data and its model, weights loaded, in eval mode."""

    data: DataBundle
    model: nn.Module


def build_run(recipe: Recipe, device: torch.device, *, weights: Any = None,
              initial_weights: bool = True) -> RunComponents:
    """Every component of a run of ``recipe`` on ``device``.

    In-memory data moves to the device and the model takes channels-last where the recipe's
    ``train`` section and the device ask for it. ``weights``: a loaded checkpoint whose model
    weights replace the fresh ones (``advtrain select --checkpoint``). ``initial_weights`` False:
    ``model.weights`` is not read (a resumed run takes its weights from the checkpoint).
    """
    data = build_data(recipe)
    check_selector_fits(recipe, data)
    if keeps_data_on_device(device, recipe.train.data_on_device):
        data = move_data_to_device(data, device)
    model = build_model_for(recipe, data, weights_from_checkpoint=weights is not None or not initial_weights)
    if weights is not None:
        ckpt_io.load_model_weights(weights, model)
    model = model.to(device)
    if prefers_channels_last(device, recipe.train.channels_last):
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(recipe)
    optimizer = build_optimizer(recipe, model)
    return RunComponents(
        data=data, model=model, objective=objective,
        selection_objective=build_selection_objective(recipe, objective), selector=build_selector(recipe),
        optimizer=optimizer, lr_factor=build_lr_schedule(recipe), base_lrs=[g["lr"] for g in optimizer.param_groups],
        eval_attacks=build_eval_attacks(recipe.eval.attacks, eps=recipe.eval.eps, alpha=recipe.eval.alpha))


def build_evaluation(recipe: Recipe, checkpoint: Any, device: torch.device) -> EvalComponents:
    """The data and model of a loaded ``checkpoint`` whose stored recipe is ``recipe``, on ``device``."""
    data = build_data(recipe)
    model = build_model_for(recipe, data, weights_from_checkpoint=True)
    ckpt_io.load_model_weights(checkpoint, model)
    return EvalComponents(data=data, model=model.to(device).eval())


def build_data(recipe: Recipe) -> DataBundle:
    """The dataset bundle (train/val/test sources plus shape, classes and loader settings)."""
    data = recipe.components["data"]
    with building("data", data.name):
        return DATASETS.get(data.name).build(data.params)


def build_model_for(recipe: Recipe, data: Any, *, weights_from_checkpoint: bool = False) -> nn.Module:
    """The classifier, with the dataset's normalisation as its first module.

    ``weights_from_checkpoint``: the caller loads a checkpoint's weights next, so ``pretrained`` and
    ``weights`` are ignored (a recipe stored in a downloaded checkpoint never makes timm fetch
    anything, nor reads the file its ``model.weights`` names).
    A one-image forward pass checks that the model takes the data's image size and class count.
    """
    spec = recipe.components["model"].params
    mismatch = num_classes_problem(spec.num_classes, recipe.components["data"].name, data.num_classes)
    if mismatch:
        raise RecipeError([mismatch], source=recipe.source)
    with building("model", spec.name):
        model = MODELS.get(spec.name).build(spec, num_classes=data.num_classes, in_chans=data.image_shape[0],
                                            mean=data.mean, std=data.std,
                                            pretrained=False if weights_from_checkpoint else None)
    check_model_takes(model, spec.name, data.image_shape, data.num_classes)
    if spec.weights is not None and not weights_from_checkpoint:
        from advtrain.models.external import load_weights

        load_weights(model.net, Path(spec.weights), owner=f"model '{spec.name}' (model.weights)")
    return model


def build_objective(recipe: Recipe) -> Objective:
    """The training objective, bound to its attack."""
    from advtrain.attacks import ATTACKS
    from advtrain.objectives import OBJECTIVES

    objective, attack = recipe.components["objective"], recipe.components["attack"]
    with building("objective", objective.name):
        built = ATTACKS.get(attack.name).build(attack.params) if attack is not None else None
        return OBJECTIVES.get(objective.name).build(objective.params, attack=built)


def build_selection_objective(recipe: Recipe, objective: Objective) -> Objective:
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


def build_selector(recipe: Recipe) -> Selector:
    """The selector: features and labels in, a weighted coreset out."""
    selector = recipe.components["selector"]
    with building("selector", selector.name):
        return SELECTORS.get(selector.name).build(selector.params)


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the model's trainable parameters."""
    optim = recipe.components["optim"]
    with building("optim", optim.name):
        return OPTIMIZERS.get(optim.name).build(optim.params, model=model)


def build_lr_schedule(recipe: Recipe) -> LrFn:
    """The learning-rate multiplier as a function of (fractional epoch, total epochs)."""
    sched = recipe.components["lr_schedule"]
    with building("lr_schedule", sched.name):
        return LR_SCHEDULES.get(sched.name).build(sched.params)


def build_eval_attacks(names: list[str], **overrides: Any) -> list[Any]:
    from advtrain.attacks.presets import resolve_eval_attacks

    with building("eval", ", ".join(names)):
        return resolve_eval_attacks(names, **overrides)


def check_selector_fits(recipe: Recipe, data: Any) -> None:
    """Refuse per-class batch-wise selection when a class is smaller than one candidate batch."""
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
    problem = selector_fit_problem(recipe.components["selector"].params, counts, data.batch_size)
    if problem:
        raise RecipeError([problem], source=recipe.source)


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
