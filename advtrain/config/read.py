"""Read a recipe file, apply ``key=value`` overrides and resolve plain ``${key}`` interpolations."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advtrain.config.schema import COMPONENT_SECTIONS
from advtrain.errors import RecipeError, UserError, did_you_mean

#: ``${key}``, ``${section.key}``, ``${list[0]}`` or relative ``${.key}``: the only interpolation a recipe may use.
_PLAIN_INTERPOLATION = re.compile(r"\$\{\.*[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*\}")


def recipes_dir() -> Path:
    """Shipped recipes: inside the wheel (``advtrain/recipes``) or the source checkout."""
    here = Path(__file__).resolve().parents[1]
    packaged = here / "recipes"
    return packaged if packaged.is_dir() else here.parent / "recipes"


def find_recipe(path_or_name: str) -> Path:
    """A recipe path as given, or the name of a shipped recipe (``cifar10_linf``)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    shipped = recipes_dir() / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file() and not path.parent.parts[1:]:
        return shipped
    if path.exists():
        raise UserError(f"recipe '{path}' is a directory; give a .yaml file")
    names = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    hint = did_you_mean(path.stem, names)
    raise UserError(
        f"recipe file '{path}' does not exist{hint} Give a path to a .yaml recipe or the name of a "
        f"shipped recipe ({', '.join(names)})."
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict (interpolations left unresolved)."""
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError([f"YAML syntax error{where}: {problem}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read recipe '{path}': {err}") from None
    except OmegaConfBaseException as err:
        raise RecipeError([f"cannot parse: {str(err).splitlines()[0]}"], source=str(path)) from None
    data = OmegaConf.to_container(node, resolve=False)
    if not isinstance(data, dict):
        raise RecipeError(["the top level must be a mapping of sections (data:, model:, ...)"],
                          source=str(path))
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` on the first ``=`` and parse the value as YAML does."""
    if "=" not in text:
        raise RecipeError([f"override '{text}' must look like key=value (e.g. schedule.epochs=10)"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError([f"override '{text}' has an empty key"])
    try:
        value = yaml_value(raw)
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        raise RecipeError([f"override '{text}': cannot parse value ({str(err).splitlines()[0]})"]) from None
    return key, value


def yaml_value(raw: str) -> Any:
    """Parse one override value with OmegaConf's YAML loader (``5e-4`` is a float there)."""
    if raw.strip() == "":
        return ""
    return OmegaConf.to_container(OmegaConf.create(f"v: {raw}"), resolve=False)["v"]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge ``key=value`` overrides; ``section=name`` replaces a component section."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in COMPONENT_SECTIONS and isinstance(value, str):
            data[parts[0]] = {"name": value}  # swap the component, starting from its defaults
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise RecipeError([f"override '{text}': '{part}' is not a section"])
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def interpolation_problem(text: str) -> str | None:
    """Why ``text`` may not be interpolated, or None when it only uses plain ``${key}`` references.

    OmegaConf's resolvers (``${oc.env:...}``, ``${oc.decode:...}``, custom ones) would let a shared
    recipe read the environment into recipe.yaml, reports and checkpoints; only references to other
    recipe keys are allowed. ``\\${...}`` is a literal and always fine.
    """
    rest = _PLAIN_INTERPOLATION.sub("", text.replace("\\${", ""))
    if "${" not in rest:
        return None
    return (f"'{text}' uses a resolver or expression; only plain interpolation of another recipe key is "
            "allowed (e.g. ${name} or ${data.batch_size}), never ${oc.env:...} or other resolvers: a recipe "
            "does not read the environment")


def _leaves(node: Any, path: str) -> list[tuple[str, str]]:
    """(key path, text) of every string leaf that contains ``${``."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) and "${" in node else []


def resolve_interpolations(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Resolve ``${...}`` leaf by leaf so that each broken one is reported with its key path.

    Every leaf is checked first: a single resolver anywhere stops all resolution, since a plain
    ``${name}`` would otherwise evaluate the resolver stored under ``name``.
    """
    refused = [f"{path}: {bad}" for path, text in _leaves(data, "") if (bad := interpolation_problem(text))]
    if refused:
        problems.extend(refused)
        return data
    cfg = OmegaConf.create(data)

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            try:
                return OmegaConf.select(cfg, path, throw_on_resolution_failure=True)
            except OmegaConfBaseException as err:
                problems.append(f"{path}: cannot resolve interpolation '{node}' ({str(err).splitlines()[0]})")
                return node  # kept as text: check_params stores every value literally
        return node

    return walk(data, "")
