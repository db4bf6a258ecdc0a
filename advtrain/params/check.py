"""Check a section's values against its params dataclass: unknown keys, types, ranges, required values."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
import warnings
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from advtrain.errors import did_you_mean
from advtrain.params import FractionError, check_json_type, check_range, choice_text, parse_number


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
                 problems: list[str], *, strict: bool = False) -> Any:
    """Validate ``values`` against a params dataclass; append problems; return the instance.

    ``strict``: for data that arrives typed (a checkpoint's JSON metadata), not written by hand:
    types must match as they are (no ``8/255``, no ``"1"`` for 1), and a field whose type is a
    params dataclass is checked the same way, one level down.
    """
    if strict:
        return _check_typed(params_cls, values, path, owner, problems)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = _field_types(params_cls)
    cfg = OmegaConf.structured(params_cls)
    unknown = [key for key in values if key not in fields]
    problems.extend(unknown_key_problems(unknown, fields, path, f"not a parameter of {owner}"))
    for key, value in values.items():
        if key not in fields:
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
            choices = fields[key].metadata.get("choices")
            expected = f"one of {choice_text(choices)}" if choices else _type_name(hints[key])
            problems.append(f"{path}.{key}: expected {expected}, got {value!r} "
                            f"({str(err).splitlines()[0]})")
            continue
        if OmegaConf.is_config(current):  # lists: check_range checks each item
            current = OmegaConf.to_container(current)
        bad = check_range(current, fields[key]) or (path_problem(current) if fields[key].metadata.get("path") else None)
        if bad:
            problems.append(f"{path}.{key}: {bad}")
    for name in fields:
        if OmegaConf.is_missing(cfg, name):
            problems.append(f"{path}.{name}: missing required value ({fields[name].metadata.get('help', '')})")
    try:
        params = OmegaConf.to_object(cfg)
    except OmegaConfBaseException:
        return None
    for name, f in fields.items():  # '~' is the home folder in every path of a recipe, as in a shell
        value = getattr(params, name, None)
        if f.metadata.get("path") and isinstance(value, str) and value.startswith("~"):
            setattr(params, name, os.path.expanduser(value))
    return params


#: How many unknown keys a message names before it counts the rest.
SHOWN_UNKNOWN = 5
MAX_PATH = 4096
_PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unknown_key_problems(unknown: list[str], valid: Any, path: str, what: str) -> list[str]:
    """One problem per unknown key (with a did-you-mean hint), or one that names the first few and counts the rest."""
    valid = list(valid)
    listing = ", ".join(valid) or "none"
    prefix = f"{path}." if path else ""
    if len(unknown) <= SHOWN_UNKNOWN:
        return [f"{prefix}{key}: {what}{did_you_mean(key, valid)} (valid: {listing})" for key in unknown]
    shown = ", ".join(f"'{_short(str(k))}'" for k in unknown[:SHOWN_UNKNOWN])
    return [f"{path or 'recipe'}: {len(unknown):,} unknown keys ({what}): {shown} and {len(unknown) - SHOWN_UNKNOWN:,} "
            f"more (valid: {listing})"]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def path_problem(value: Any) -> str | None:
    """Why a recipe value cannot name a file or folder (empty, control characters, too long, unknown ``~user``)."""
    if not isinstance(value, str):
        return None
    if not value.strip():
        return "must name a file or folder, got an empty string (it would mean the working folder)"
    control = _PATH_CONTROL.search(value)
    if control:
        return f"{value!r} holds the control character {control.group()!r}; a path is printable text"
    if len(value) > MAX_PATH:
        return f"a path of {len(value):,} characters; paths are at most {MAX_PATH}"
    if value.startswith("~") and os.path.expanduser(value) == value:
        return f"'{value}' starts with '~' but names no known home folder; write the folder out in full"
    return None


def _check_typed(params_cls: type, values: dict[str, Any], path: str, owner: str, problems: list[str]) -> Any:
    """:func:`check_params` without coercion (``strict``): JSON types as declared, then the same rules."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = _field_types(params_cls)
    before, kept = len(problems), {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not a parameter of {owner}{did_you_mean(key, fields)} "
                            f"(valid: {', '.join(fields) or 'none'})")
            continue
        bad = check_json_type(value, hints[key])
        nested = [a for a in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(a)]
        if bad is None and nested and isinstance(value, dict):
            value = _check_typed(nested[0], value, f"{path}.{key}", f"{owner} ({key})", problems)
        elif bad is None:
            bad = check_range(value, fields[key])
        if bad:
            problems.append(f"{path}.{key}: {bad}")
        kept[key] = value
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{path}.{name}: missing required value ({f.metadata.get('help', '')})")
    return params_cls(**kept) if len(problems) == before else None


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


def check_flag(flag: str, value: Any, params_cls: type, key: str) -> Any:
    """A command-line flag that sets what recipe key ``params_cls.key`` sets, held to that key's rules.

    Raises:
        UserError: naming the flag and the rule (the same bound as the recipe key).
    """
    from advtrain.errors import UserError

    field = next(f for f in dataclasses.fields(params_cls) if f.name == key)
    bad = check_range(value, field)
    if bad:
        raise UserError(f"{flag}: {bad} (the same rule as the recipe key it stands for)")
    return value
