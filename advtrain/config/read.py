"""Read a recipe file, apply ``key=value`` overrides and resolve plain ``${key}`` interpolations."""

from __future__ import annotations

import copy
import inspect
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


#: Limits every YAML text advtrain parses (recipe files, recipes stored in checkpoints, override values) must
#: meet before it is turned into data. A recipe is a few kilobytes, a few levels deep, a few hundred values:
#: beyond these it is a mistake or a hostile file (an alias bomb expands a kilobyte into gigabytes).
MAX_RECIPE_CHARS = 1_000_000
MAX_DEPTH = 32
MAX_VALUES = 10_000
MAX_STRING = 10_000
#: Characters an override may not hold: a line break would start a new YAML key (``epochs=3\nname: x``
#: would silently set ``name`` and drop nothing visible), other control codes are never part of a value.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def yaml_limit_problems(text: str) -> list[str]:
    """Why ``text`` is too big to parse as a recipe (size, nesting, values with aliases expanded, string length).

    Walks PyYAML's event stream, which is iterative (no recursion, nothing built), so a 3,000-deep
    list or a billion-laughs alias chain is refused before any Python object exists. An alias
    counts as the size and depth of what it stands for.

    Raises:
        yaml.YAMLError: the text is not YAML (the caller reports where).
    """
    if len(text) > MAX_RECIPE_CHARS:
        return [f"the recipe is {len(text):,} characters; recipes are at most {MAX_RECIPE_CHARS:,} (a few "
                "kilobytes is usual)"]
    values, depth = 0, 0
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) it expands to
    frames: list[list[Any]] = []  # [anchor, values at start, deepest level below]
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        extra_depth = 0
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            values, depth = values + 1, depth + 1
            frames.append([event.anchor, values, depth])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, start, deepest = frames.pop()
            if anchor is not None:
                sizes[anchor] = (values - start + 1, deepest - depth + 1)
            if frames:
                frames[-1][2] = max(frames[-1][2], deepest)
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent):
            values += 1
            if len(event.value) > MAX_STRING:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                return [f"line {line}: a value of {len(event.value):,} characters; recipe values are at most "
                        f"{MAX_STRING:,}"]
            if event.anchor is not None:
                sizes[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            count, extra_depth = sizes.get(event.anchor, (1, 0))
            values += count
            if frames:
                frames[-1][2] = max(frames[-1][2], depth + extra_depth)
        if depth + extra_depth > MAX_DEPTH:
            return [f"the recipe nests more than {MAX_DEPTH} levels deep (with aliases expanded); recipes are a "
                    "few levels deep (section: {key: value})"]
        if values > MAX_VALUES:
            return [f"the recipe holds more than {MAX_VALUES:,} values (with aliases expanded); recipes hold a few "
                    "hundred, so this is an alias bomb or not a recipe"]
    return []


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"YAML syntax error{where}: {problem}"


def _omegaconf_create(text: str) -> Any:
    """``OmegaConf.create`` of a text that passed :func:`yaml_limit_problems`; OmegaConf versions that have
    their own alias limit read it from the environment, so it is turned off (ours is stricter)."""
    if "max_yaml_expanded_nodes" in inspect.signature(OmegaConf.create).parameters:
        return OmegaConf.create(text, max_yaml_expanded_nodes=None)
    return OmegaConf.create(text)


def _top_is_mapping(text: str) -> bool:
    """The document's top node is a mapping (or there is none): OmegaConf reads any other text as a key."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.StreamStartEvent, yaml.DocumentStartEvent)):
            continue
        return isinstance(event, (yaml.MappingStartEvent, yaml.DocumentEndEvent, yaml.StreamEndEvent))
    return True


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict (interpolations left unresolved), within :func:`yaml_limit_problems`."""
    try:
        if path.stat().st_size > 4 * MAX_RECIPE_CHARS:  # do not even read a huge file
            raise RecipeError([f"the file is {path.stat().st_size:,} bytes; recipes are at most "
                               f"{MAX_RECIPE_CHARS:,} characters"], source=str(path))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read recipe '{path}': {err}") from None
    try:
        limits = yaml_limit_problems(text)
        if limits:
            raise RecipeError(limits, source=str(path))
        if not _top_is_mapping(text):
            raise RecipeError(["the top level must be a mapping of sections (data:, model:, ...)"], source=str(path))
        node = _omegaconf_create(text)  # OmegaConf's loader: 5e-4 is a float, a key given twice is an error
    except yaml.YAMLError as err:
        raise RecipeError([_yaml_error(err)], source=str(path)) from None
    except (OmegaConfBaseException, ValueError, AssertionError) as err:
        raise RecipeError([f"cannot parse: {str(err).splitlines()[0] if str(err) else type(err).__name__}"],
                          source=str(path)) from None
    data = OmegaConf.to_container(node, resolve=False)
    if not isinstance(data, dict):
        raise RecipeError(["the top level must be a mapping of sections (data:, model:, ...)"],
                          source=str(path))
    return data


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice (as OmegaConf does for recipe files)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:  # the keys as written (a merge key's values may be overridden)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key_node.value}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_stored_recipe(text: str, source: str) -> dict[str, Any]:
    """A recipe stored as YAML text (a checkpoint's metadata) as plain data, within the same limits as a file.

    Parsed as ``yaml.safe_load`` does (a key given twice refused): no OmegaConf, no resolvers, no
    interpolation.
    """
    if not isinstance(text, str):
        raise RecipeError(["stored recipe is not text"], source)
    try:
        limits = yaml_limit_problems(text)
        if limits:
            raise RecipeError([f"stored recipe: {p}; this checkpoint was not written by advtrain" for p in limits],
                              source)
        data: Any = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise RecipeError([f"stored recipe is not valid YAML: {str(err).splitlines()[0]}"], source) from None
    if not isinstance(data, dict):
        raise RecipeError(["stored recipe is not a mapping"], source)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` on the first ``=`` and parse the value as YAML does."""
    if "=" not in text:
        raise RecipeError([f"override '{text}' must look like key=value (e.g. schedule.epochs=10)"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError([f"override '{text}' has an empty key"])
    control = _CONTROL.search(text)
    if control:
        what = "a line break" if control.group() in "\n\r" else f"the control character {control.group()!r}"
        raise RecipeError([f"override {text!r} holds {what}; give one key=value per argument, each on one line "
                           "(e.g. schedule.epochs=3 name=x)"])
    try:
        limits = yaml_limit_problems(f"v: {raw}")
        if limits:
            raise RecipeError([f"override '{key}=...': {p.replace('the recipe', 'the value')}" for p in limits])
        value = yaml_value(raw)
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, AssertionError) as err:
        raise RecipeError([f"override '{text}': cannot parse value ({str(err).splitlines()[0]})"]) from None
    return key, value


def yaml_value(raw: str) -> Any:
    """Parse one override value with OmegaConf's YAML loader (``5e-4`` is a float there)."""
    if raw.strip() == "":
        return ""
    return OmegaConf.to_container(_omegaconf_create(f"v: {raw}"), resolve=False)["v"]


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
