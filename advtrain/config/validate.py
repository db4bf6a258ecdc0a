"""The recipe's own validation: shape, every section's params, and the rules that span sections.

Phase 1 checks the shape: top-level keys, the fixed sections (schedule/train/eval/output) and
that each component section names a registered component. Phase 2 checks each component's params
against that component's own dataclass (unknown keys, types, ranges, required values). All
problems are collected and raised together as one :class:`~advtrain.errors.RecipeError`, each
with its key path and, for typos, a did-you-mean hint. Nothing is built before this passes; the
checks against the data come after it (:mod:`advtrain.config.data_checks`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from advtrain.config.read import resolve_interpolations
from advtrain.config.recipe import Component, Recipe
from advtrain.config.schema import COMPONENT_SECTIONS, FIXED_SECTIONS, RecipeTop, compile_problems, log_problems
from advtrain.config.sections import SECTION_REGISTRIES
from advtrain.errors import RecipeError, UserError
from advtrain.objectives import ignored_attack_params
from advtrain.params.check import check_params, unknown_key_problems

TOP_KEYS = [f.name for f in dataclasses.fields(RecipeTop)]
#: A message lists this many problems, then counts the rest.
MAX_SHOWN_PROBLEMS = 40
ALL_SECTIONS = [*TOP_KEYS, *COMPONENT_SECTIONS, *FIXED_SECTIONS]


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
    registry = SECTION_REGISTRIES[section]
    if name not in registry:
        problems.append(f"{section}.name: {registry.unknown_message(name)}")
        return None
    entry = registry.get(name)
    own = {f.name for f in dataclasses.fields(entry.params)} if entry.params is not None else set()
    values = {k: v for k, v in spec.items() if k != "name" or "name" in own}  # ModelParams holds its name
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


def _check_selection_attack(components: dict[str, Component | None], problems: list[str], *,
                            refuse_ignored: bool = True) -> None:
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
    attacks, objectives = SECTION_REGISTRIES["attack"], SECTION_REGISTRIES["objective"]
    allowed = getattr(objectives.get(objective.name).constructor, "attacks", ())
    if not allowed or attack is None:
        problems.append(f"selector.attack: objective '{objective.name}' selects on clean points (it has no "
                        f"attack); remove selector.attack")
        return
    name = spec.get("name", attack.name)
    if name not in attacks:
        problems.append(f"selector.attack.name: {attacks.unknown_message(name)}")
        return
    if name not in allowed:
        problems.append(f"selector.attack.name: objective '{objective.name}' works with "
                        f"{', '.join(allowed)}, not '{name}'")
        return
    params_cls = attacks.get(name).params
    own = {f.name for f in dataclasses.fields(params_cls)}
    inherited = dataclasses.asdict(attack.params)
    if name != attack.name:
        inherited = {k: v for k, v in inherited.items() if k in ("norm", "eps") and k in own}
    values = {**inherited, **{k: v for k, v in spec.items() if k != "name"}}
    before = len(problems)
    params = check_params(params_cls, values, "selector.attack", f"attack '{name}'", problems)
    if len(problems) == before and params is not None:
        if refuse_ignored:
            problems.extend(ignored_attack_params(objective.name, name, params, section="selector.attack",
                                                  keys=spec))
        selector.params.attack = {"name": name, **dataclasses.asdict(params)}


def validate(data: dict[str, Any], source: str | None = None, *, interpolate: bool = True) -> Recipe:
    """Validate a recipe dict (after overrides); raise one RecipeError listing every problem.

    Args:
        data: The recipe as plain data.
        source: Where it came from, for messages.
        interpolate: Resolve plain ``${key}`` references. False for recipes stored in checkpoints:
            they are data, written resolved, and any ``${`` in them stays literal text.
    """
    problems: list[str] = unknown_key_problems([k for k in data if k not in ALL_SECTIONS], ALL_SECTIONS, "",
                                               "unknown recipe key")
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
        merged = resolve_interpolations(merged, problems)
    top = check_params(RecipeTop, {k: merged[k] for k in TOP_KEYS}, "recipe", "the recipe", problems)
    fixed = {}
    for section, cls in FIXED_SECTIONS.items():
        fixed[section] = check_params(cls, merged[section], section, f"section '{section}'", problems)
    components = {s: _check_component(s, merged.get(s), problems) for s in COMPONENT_SECTIONS}
    out_dir = getattr(fixed["output"], "dir", None)
    if isinstance(out_dir, str) and ".." in Path(out_dir).parts:
        problems.append(f"output.dir: '{out_dir}' goes up with '..'; a recipe writes below the folder it is run "
                        "from (or at an absolute path you give), e.g. output.dir=runs/mine")
    _check_selection_attack(components, problems, refuse_ignored=interpolate)
    if not problems:
        _cross_checks(components, fixed, problems, refuse_ignored=interpolate)
        _device_checks(top, problems)
        problems.extend(compile_problems(fixed["train"]))
        if interpolate:  # a stored recipe's loggers do not matter to eval on a machine without them
            problems.extend(log_problems(fixed["log"]))
    if problems:
        problems = [p.replace("recipe.", "", 1) if p.startswith("recipe.") else p for p in problems]
        refused = {p.split(":", 1)[0] for p in problems if "uses a resolver" in p}  # one message per key
        problems = [p for p in problems if "uses a resolver" in p or p.split(":", 1)[0] not in refused]
        if len(problems) > MAX_SHOWN_PROBLEMS:
            problems = [*problems[:MAX_SHOWN_PROBLEMS], f"... and {len(problems) - MAX_SHOWN_PROBLEMS:,} more problems"]
        raise RecipeError(problems, source=source)
    resolved = _as_written(merged, components, fixed, top)
    return Recipe(
        name=top.name, seed=top.seed, device=top.device, precision=top.precision,
        components=components, schedule=fixed["schedule"], train=fixed["train"],
        eval=fixed["eval"], output=fixed["output"], resolved=resolved, source=source, runtime=fixed["runtime"],
        log=fixed["log"],
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


def _device_checks(top: Any, problems: list[str]) -> None:
    """Precision the recipe's own device cannot run (``device: auto`` is decided on the machine)."""
    if top.precision == "fp16" and top.device in ("cpu", "mps"):
        problems.append(f"precision: precision=fp16 needs CUDA (it uses a gradient scaler), but device is "
                        f"'{top.device}'; use bf16 or fp32")


def _cross_checks(components: dict[str, Component | None], fixed: dict[str, Any],
                  problems: list[str], *, refuse_ignored: bool = True) -> None:
    """Rules that span sections (objective ↔ attack, eval attack names, schedule).

    ``refuse_ignored``: refuse attack keys the objective ignores (set away from their defaults). Off
    for recipes stored in checkpoints: a checkpoint an earlier advtrain wrote stays evaluable.
    """
    objective = components["objective"]
    attack = components["attack"]
    if objective is not None:
        spec = SECTION_REGISTRIES["objective"].get(objective.name).constructor
        allowed = getattr(spec, "attacks", ())
        if allowed and attack is None:
            problems.append(f"attack: objective '{objective.name}' needs an attack section "
                            f"(one of: {', '.join(allowed)})")
        elif allowed and attack is not None and attack.name not in allowed:
            problems.append(f"attack.name: objective '{objective.name}' works with "
                            f"{', '.join(allowed)}, not '{attack.name}'")
        elif attack is not None and refuse_ignored:
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
