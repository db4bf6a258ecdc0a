"""The one validation pass every command runs: read (or take a stored recipe), override, validate,
check against the data.

``advtrain validate``, ``run`` and ``select`` call :func:`load_recipe`; ``advtrain eval`` calls
:func:`recipe_from_yaml_text` on the recipe stored in a checkpoint (with its ``--data``
overrides). Both end in the same two steps: :func:`~advtrain.config.validate.validate` (the
recipe's own rules, every problem at once) and
:func:`~advtrain.config.data_checks.check_against_data` (the rules that need the dataset's cheap
facts), so whatever a recipe gets wrong is refused before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from advtrain.config.data_checks import check_against_data
from advtrain.config.read import MAX_RECIPE_CHARS, apply_overrides, find_recipe, parse_stored_recipe, read_yaml
from advtrain.config.recipe import Recipe
from advtrain.config.validate import validate

#: A recipe stored in a checkpoint larger than this is not one advtrain wrote (the limit of recipe files).
MAX_STORED_RECIPE = MAX_RECIPE_CHARS

__all__ = ["MAX_STORED_RECIPE", "Recipe", "load_recipe", "recipe_from_yaml_text"]


def load_recipe(path_or_name: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file (or shipped recipe name), then check it against its data."""
    path = find_recipe(path_or_name)
    data = apply_overrides(read_yaml(path), overrides or [])
    recipe = validate(data, source=str(path))
    check_against_data(recipe)
    return recipe


def recipe_from_yaml_text(text: str, source: str, data_overrides: list[str] | None = None,
                          relocate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Recipe:
    """Validate a recipe stored as YAML text (e.g. inside a checkpoint's metadata) and check it against its data.

    Parsed as plain data (``yaml.safe_load``): no OmegaConf, no resolvers, no interpolation.
    ``data_overrides`` (``path=...`` or ``data.path=...``) point the stored data section elsewhere,
    e.g. at this machine's copy of the dataset; ``relocate`` may rewrite the parsed mapping first.
    ``data.download`` is always off here: evaluating a checkpoint from elsewhere never opens a
    network connection or creates a data folder.
    """
    data: Any = parse_stored_recipe(text, source)  # the same size, depth and alias limits as a recipe file
    if relocate is not None:  # e.g. relative data paths resolved from where the run was made
        data = relocate(data)
    if data_overrides:
        data = apply_overrides(data, [o if o.startswith("data.") else f"data.{o}" for o in data_overrides])
        source = f"{source} + --data"
    recipe = validate(data, source=source, interpolate=False)
    params = recipe.components["data"].params
    if getattr(params, "download", False):  # a stored recipe is data: it never downloads nor creates anything
        params.download = False
    check_against_data(recipe)  # a dataset missing here is a DataError naming it and where it was looked for
    return recipe
