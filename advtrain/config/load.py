"""Load a recipe, apply ``key=value`` overrides and validate everything at once.

Phase 1 checks the shape: top-level keys, the fixed sections (schedule/train/eval/output) and
that each component section names a registered component. Phase 2 checks each component's params
against that component's own dataclass (unknown keys, types, ranges, required values). All
problems are collected and raised together as one :class:`~advtrain.errors.RecipeError`, each
with its key path and, for typos, a did-you-mean hint. Nothing is built before this passes.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advtrain.config.schema import COMPONENT_SECTIONS, FIXED_SECTIONS, RecipeTop
from advtrain.errors import RecipeError, UserError, did_you_mean
from advtrain.params import FractionError, check_range, parse_number
from advtrain.registry import Registry

TOP_KEYS = [f.name for f in dataclasses.fields(RecipeTop)]
#: ``${key}``, ``${section.key}``, ``${list[0]}`` or relative ``${.key}``: the only interpolation a recipe may use.
_PLAIN_INTERPOLATION = re.compile(r"\$\{\.*[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*\}")
#: A recipe stored in a checkpoint larger than this is not one advtrain wrote.
MAX_STORED_RECIPE = 1_000_000
ALL_SECTIONS = [*TOP_KEYS, *COMPONENT_SECTIONS, *FIXED_SECTIONS]


@dataclass
class Component:
    """A component section after validation: registered name plus its params dataclass."""

    name: str
    params: Any


@dataclass
class Recipe:
    """A validated recipe: typed sections plus the resolved plain dict it came from."""

    name: str
    seed: int
    device: str
    precision: str
    components: dict[str, Component | None]
    schedule: Any
    train: Any
    eval: Any
    output: Any
    resolved: dict[str, Any] = field(repr=False)
    source: str | None = None

    def __getattr__(self, item: str) -> Any:
        components = self.__dict__.get("components", {})
        if item in components:
            return components[item]
        raise AttributeError(item)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (fractions kept as written, e.g. ``8/255``)."""
        return yaml.safe_dump(self.resolved, sort_keys=False, default_flow_style=None, width=100)


def section_registry(section: str) -> Registry:
    """The registry a component section names its component from."""
    if section == "data":
        from advtrain.data import DATASETS as reg
    elif section == "model":
        from advtrain.models import MODELS as reg
    elif section == "objective":
        from advtrain.objectives import OBJECTIVES as reg
    elif section == "attack":
        from advtrain.attacks import ATTACKS as reg
    elif section == "selector":
        from advtrain.selection import SELECTORS as reg
    elif section == "optim":
        from advtrain.train.optim import OPTIMIZERS as reg
    elif section == "lr_schedule":
        from advtrain.train.lr import LR_SCHEDULES as reg
    else:  # pragma: no cover - programming error
        raise KeyError(section)
    return reg


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


def _resolve_interpolations(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
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


def _field_types(params: type) -> dict[str, Any]:
    return typing.get_type_hints(params)


def _is_float_type(hint: Any) -> bool:
    if hint is float:
        return True
    args = typing.get_args(hint)
    return bool(args) and float in args and all(a in (float, type(None)) for a in args)


def _prepare_value(value: Any, hint: Any) -> Any:
    """Parse ``8/255`` into a float and widen ints to floats before the type check."""
    if _is_float_type(hint):
        value = parse_number(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    elif typing.get_origin(hint) is list and typing.get_args(hint) and typing.get_args(hint)[0] is float \
            and isinstance(value, list):
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else parse_number(v)
                 for v in value]
    return value


def check_params(params_cls: type, values: dict[str, Any], path: str, owner: str,
                 problems: list[str]) -> Any:
    """Validate ``values`` against a params dataclass; append problems; return the instance."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = _field_types(params_cls)
    cfg = OmegaConf.structured(params_cls)
    for key, value in values.items():
        if key not in fields:
            hint = did_you_mean(key, fields)
            valid = ", ".join(fields) or "none"
            problems.append(f"{path}.{key}: not a parameter of {owner}{hint} (valid: {valid})")
            continue
        try:
            value = _prepare_value(value, hints[key])
        except FractionError as err:
            problems.append(f"{path}.{key}: {err}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg[key] = _literal(value)
                current = cfg[key]  # an escaped ${...} in a number field fails only when read back
        except OmegaConfBaseException as err:
            expected = _type_name(hints[key])
            problems.append(f"{path}.{key}: expected {expected}, got {value!r} "
                            f"({str(err).splitlines()[0]})")
            continue
        if OmegaConf.is_config(current):  # lists: check_range checks each item
            current = OmegaConf.to_container(current)
        bad = check_range(current, fields[key])
        if bad:
            problems.append(f"{path}.{key}: {bad}")
    for name in fields:
        if OmegaConf.is_missing(cfg, name):
            problems.append(f"{path}.{name}: missing required value ({fields[name].metadata.get('help', '')})")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException:
        return None


def _literal(value: Any) -> Any:
    """Escape ``${`` so OmegaConf stores the text as written: values are resolved (or refused) before here."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return f"{_type_name(args[0])} or null"
    names = {int: "an integer", float: "a number (e.g. 0.1 or 8/255)", bool: "true/false",
             str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _check_component(section: str, spec: Any, problems: list[str]) -> Component | None:
    default = COMPONENT_SECTIONS[section]
    if spec is None and default is None and section == "attack":
        return None
    if spec is None:
        if default is None:
            problems.append(f"{section}: missing required section (needs at least 'name')")
            return None
        spec = {"name": default}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        problems.append(f"{section}: expected a mapping like {{name: ..., ...}}, got {spec!r}")
        return None
    name = spec.get("name", default)
    if name is None:
        problems.append(f"{section}.name: missing required value (which {section} to use)")
        return None
    registry = section_registry(section)
    if section == "model":
        from advtrain.models import is_known_model

        if not is_known_model(str(name)):
            problems.append(f"model.name: {registry.unknown_message(name)}; any timm model name also works")
            return None
        entry = registry.get(name) if name in registry else None
        params_cls = entry.params if entry else _model_params_cls()
        values = dict(spec)
        params = check_params(params_cls, values, section, f"model '{name}'", problems)
        _own_problems(section, params, problems)
        return Component(str(name), params)
    if name not in registry:
        problems.append(f"{section}.name: {registry.unknown_message(name)}")
        return None
    entry = registry.get(name)
    values = {k: v for k, v in spec.items() if k != "name"}
    if entry.params is None:
        for key in values:
            problems.append(f"{section}.{key}: not a parameter of {section} '{name}' (it takes none)")
        return Component(str(name), None)
    before = len(problems)
    params = check_params(entry.params, values, section, f"{section} '{name}'", problems)
    _own_problems(section, params, problems)
    # A key that belongs to another component of this kind is most likely left over from switching
    # `name` alone: point at the override that swaps the whole section.
    others = {f.name for e in registry.entries() if e.name != name and e.params for f in dataclasses.fields(e.params)}
    own = {f.name for f in dataclasses.fields(entry.params)}
    for i in range(before, len(problems)):
        key = problems[i].split(":", 1)[0].split(".", 1)[-1]
        if "not a parameter" in problems[i] and key in others - own:
            problems[i] += f" (it belongs to another {section}); to switch {section} and start from its " \
                           f"defaults, use '{section}={name}'"
    return Component(str(name), params)


def _own_problems(section: str, params: Any, problems: list[str]) -> None:
    """Rules a params dataclass checks itself (``problems()``), e.g. the allow-list of model.kwargs."""
    check = getattr(params, "problems", None)
    if callable(check):
        problems.extend(f"{section}.{p}" for p in check())
def _check_selection_attack(components: dict[str, Component | None], problems: list[str]) -> None:
    """Resolve ``selector.attack`` (the attack used only for the selection features) in place.

    It is an attack section written over the training attack: with the same ``name`` (or none)
    every unset key is the training attack's (``{steps: 2}`` is the training PGD with 2 steps);
    with another name only the threat model (``norm``, ``eps``) is carried over and the rest
    starts from that attack's defaults (an FGSM's step size is not a PGD's). The resolved section,
    every value filled, replaces what was written, so recipe.yaml and checkpoints record it.
    """
    selector, attack, objective = components["selector"], components["attack"], components["objective"]
    spec = getattr(selector.params, "attack", None) if selector is not None else None
    if spec is None or objective is None:
        return
    from advtrain.attacks import ATTACKS
    from advtrain.objectives import OBJECTIVES, ignored_attack_params

    allowed = getattr(OBJECTIVES.get(objective.name).constructor, "attacks", ())
    if not allowed or attack is None:
        problems.append(f"selector.attack: objective '{objective.name}' selects on clean points (it has no "
                        f"attack); remove selector.attack")
        return
    name = spec.get("name", attack.name)
    if name not in ATTACKS:
        problems.append(f"selector.attack.name: {ATTACKS.unknown_message(name)}")
        return
    if name not in allowed:
        problems.append(f"selector.attack.name: objective '{objective.name}' works with "
                        f"{', '.join(allowed)}, not '{name}'")
        return
    params_cls = ATTACKS.get(name).params
    own = {f.name for f in dataclasses.fields(params_cls)}
    inherited = dataclasses.asdict(attack.params)
    if name != attack.name:
        inherited = {k: v for k, v in inherited.items() if k in ("norm", "eps") and k in own}
    values = {**inherited, **{k: v for k, v in spec.items() if k != "name"}}
    before = len(problems)
    params = check_params(params_cls, values, "selector.attack", f"attack '{name}'", problems)
    if len(problems) == before and params is not None:
        problems.extend(ignored_attack_params(objective.name, name, params, section="selector.attack", keys=spec))
        selector.params.attack = {"name": name, **dataclasses.asdict(params)}


def _model_params_cls() -> type:
    from advtrain.models import ModelParams

    return ModelParams


def validate(data: dict[str, Any], source: str | None = None, *, interpolate: bool = True) -> Recipe:
    """Validate a recipe dict (after overrides); raise one RecipeError listing every problem.

    Args:
        data: The recipe as plain data.
        source: Where it came from, for messages.
        interpolate: Resolve plain ``${key}`` references. False for recipes stored in checkpoints:
            they are data, written resolved, and any ``${`` in them stays literal text.
    """
    problems: list[str] = []
    for key in data:
        if key not in ALL_SECTIONS:
            problems.append(f"{key}: unknown recipe key{did_you_mean(key, ALL_SECTIONS)} "
                            f"(valid: {', '.join(ALL_SECTIONS)})")
    # Fill fixed-section defaults so interpolations such as ${name} in output.dir resolve.
    merged = {k: v for k, v in data.items() if k in ALL_SECTIONS}
    for section in FIXED_SECTIONS:
        value = merged.get(section) or {}
        if not isinstance(value, dict):
            problems.append(f"{section}: expected a mapping, got {value!r}")
            value = {}
        merged[section] = value
    top_defaults = dataclasses.asdict(RecipeTop())
    for key in TOP_KEYS:
        merged.setdefault(key, top_defaults[key])
    defaults_for_interp = {s: {**_defaults(cls), **merged[s]} for s, cls in FIXED_SECTIONS.items()}
    merged = {**merged, **defaults_for_interp}
    if interpolate:
        merged = _resolve_interpolations(merged, problems)
    top = check_params(RecipeTop, {k: merged[k] for k in TOP_KEYS}, "recipe", "the recipe", problems)
    fixed = {}
    for section, cls in FIXED_SECTIONS.items():
        fixed[section] = check_params(cls, merged[section], section, f"section '{section}'", problems)
    components = {s: _check_component(s, merged.get(s), problems) for s in COMPONENT_SECTIONS}
    out_dir = getattr(fixed["output"], "dir", None)
    if isinstance(out_dir, str) and ".." in Path(out_dir).parts:
        problems.append(f"output.dir: '{out_dir}' goes up with '..'; a recipe writes below the folder it is run "
                        "from (or at an absolute path you give), e.g. output.dir=runs/mine")
    _check_selection_attack(components, problems)
    if not problems:
        _cross_checks(components, fixed, problems)
    if problems:
        problems = [p.replace("recipe.", "", 1) if p.startswith("recipe.") else p for p in problems]
        refused = {p.split(":", 1)[0] for p in problems if "uses a resolver" in p}  # one message per key
        problems = [p for p in problems if "uses a resolver" in p or p.split(":", 1)[0] not in refused]
        raise RecipeError(problems, source=source)
    resolved = _as_written(merged, components, fixed, top)
    return Recipe(
        name=top.name, seed=top.seed, device=top.device, precision=top.precision,
        components=components, schedule=fixed["schedule"], train=fixed["train"],
        eval=fixed["eval"], output=fixed["output"], resolved=resolved, source=source,
    )


def _defaults(cls: type) -> dict[str, Any]:
    return dataclasses.asdict(cls())


def _as_written(merged: dict[str, Any], components: dict[str, Component | None],
                fixed: dict[str, Any], top: Any) -> dict[str, Any]:
    """The fully resolved recipe for recipe.yaml: every default filled, values as written."""
    out: dict[str, Any] = {k: getattr(top, k) for k in TOP_KEYS}
    for section, comp in components.items():
        if comp is None:
            out[section] = None
            continue
        user = merged.get(section)
        user = user if isinstance(user, dict) else {}
        params = dataclasses.asdict(comp.params) if comp.params is not None else {}
        section_out = {"name": comp.name} if section != "model" else {}
        for key, value in params.items():
            section_out[key] = user.get(key, value) if isinstance(user.get(key), str) else value
        out[section] = section_out
    for section, obj in fixed.items():
        user = merged.get(section, {})
        out[section] = {k: (user.get(k) if isinstance(user.get(k), str) else v)
                        for k, v in dataclasses.asdict(obj).items()}
    return out


def _cross_checks(components: dict[str, Component | None], fixed: dict[str, Any],
                  problems: list[str]) -> None:
    """Rules that span sections (objective ↔ attack, eval attack names, schedule)."""
    from advtrain.objectives import OBJECTIVES, ignored_attack_params

    objective = components["objective"]
    attack = components["attack"]
    if objective is not None:
        spec = OBJECTIVES.get(objective.name).constructor
        allowed = getattr(spec, "attacks", ())
        if allowed and attack is None:
            problems.append(f"attack: objective '{objective.name}' needs an attack section "
                            f"(one of: {', '.join(allowed)})")
        elif allowed and attack is not None and attack.name not in allowed:
            problems.append(f"attack.name: objective '{objective.name}' works with "
                            f"{', '.join(allowed)}, not '{attack.name}'")
        elif attack is not None:
            problems.extend(ignored_attack_params(objective.name, attack.name, attack.params))
    from advtrain.attacks.presets import resolve_eval_attacks

    for i, name in enumerate(fixed["eval"].attacks):
        try:
            resolve_eval_attacks([name], eps=fixed["eval"].eps, alpha=fixed["eval"].alpha)
        except UserError as err:
            problems.append(f"eval.attacks[{i}]: {err}")
    schedule = fixed["schedule"]
    if schedule.warm_start_epochs + schedule.skip_epochs > schedule.epochs:
        problems.append(f"schedule.warm_start_epochs: {schedule.warm_start_epochs} (+ skip_epochs "
                        f"{schedule.skip_epochs}) exceeds schedule.epochs={schedule.epochs}")


def load_recipe(path_or_name: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file (or shipped recipe name)."""
    path = find_recipe(path_or_name)
    data = read_yaml(path)
    data = apply_overrides(data, overrides or [])
    return validate(data, source=str(path))


def recipe_from_yaml_text(text: str, source: str) -> Recipe:
    """Validate a recipe stored as YAML text (e.g. inside a checkpoint's metadata).

    Parsed as plain data (``yaml.safe_load``): no OmegaConf, no resolvers, no interpolation.
    """
    if len(text) > MAX_STORED_RECIPE:
        raise RecipeError([f"stored recipe is {len(text)} characters; advtrain writes recipes of a few "
                           "kilobytes, so this checkpoint was not written by advtrain"], source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError([f"stored recipe is not valid YAML: {str(err).splitlines()[0]}"], source) from None
    if not isinstance(data, dict):
        raise RecipeError(["stored recipe is not a mapping"], source)
    return validate(data, source=source, interpolate=False)
