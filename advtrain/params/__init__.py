"""Helpers for declaring component parameters as dataclass fields.

A component's parameters are a plain dataclass; :func:`param` attaches the help text and the
range rules that the recipe validator checks (``ge``/``gt``/``le``/``lt``/``choices``), so the
rules live next to the default they constrain and ``advtrain list`` can print them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*/\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*$")
#: Every integer parameter must fit in a signed 64-bit integer (torch and numpy take nothing wider).
INT_LIMIT = 2**63
_NUMBER = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$")


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",  # noqa: A002 - mirrors argparse's name
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    pattern: str | None = None,
    path: bool = False,
    length: int | None = None,
) -> Any:
    """A dataclass field with help text and validation rules in its metadata.

    ``pattern`` is a regular expression a string must match in full (e.g. a file-name-safe run
    name); ``path`` marks a string that names a file or folder (its own rules live with the
    component that opens it). Mutable defaults (lists, dicts) are wrapped in a ``default_factory``
    automatically.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "pattern": pattern,
            "path": path, "length": length}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class FractionError(ValueError):
    """A string that looks like ``a/b`` but cannot be a number (e.g. ``8/0``)."""


def parse_number(value: Any) -> Any:
    """Turn ``"8/255"``, ``"5e-4"`` or ``"0.5"`` into a float without ``eval``.

    Non-strings and strings that are not numbers come back unchanged, so the type check that
    follows can report them. ``"8/0"`` raises :class:`FractionError`.
    """
    if not isinstance(value, str):
        return value
    match = _FRACTION.match(value)
    if match:
        numerator, denominator = float(match.group(1)), float(match.group(2))
        if denominator == 0:
            raise FractionError(f"'{value}' divides by zero")
        number = numerator / denominator
    elif _NUMBER.match(value):
        number = float(value)
    else:
        return value
    if not math.isfinite(number):
        raise FractionError(f"'{value}' is not a finite number")
    return number


def format_number(value: float) -> str:
    """The inverse of :func:`parse_number` for budgets: how ε and step sizes are written back.

    A short decimal stays one (``0.2``, not ``51/255``; ℓ2 ``1``); a whole number of 255ths below 1
    becomes ``8/255`` (how papers write ℓ∞ budgets); anything else is the float with six
    significant digits.
    """
    if float(f"{value:.4g}") == value:
        return f"{value:g}"
    scaled = value * 255
    if 0 < value < 1 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:g}"


def check_range(value: Any, field: dataclasses.Field) -> str | None:
    """Return a description of the violated rule of ``field`` for ``value``, or None."""
    meta = field.metadata
    choices = meta.get("choices")
    if choices is not None and (value not in choices or isinstance(value, bool) != _any_bool(choices, value)):
        return f"must be one of {choice_text(choices)}, got '{value}'"
    pattern = meta.get("pattern")
    if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern, value):
        return f"'{value}' is not allowed here ({meta.get('help') or 'see advtrain list'}; must match {pattern})"
    if isinstance(value, list):
        if meta.get("length") is not None and len(value) != meta["length"]:
            return f"must be a list of {meta['length']} values, got {len(value)}"
        for item in value:
            bad = check_range(item, field)
            if bad:
                return bad
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        return f"must fit in 64 bits (|value| < 2^63), got {value}"
    tests = {"ge": (lambda b: value >= b, ">="), "gt": (lambda b: value > b, ">"),
             "le": (lambda b: value <= b, "<="), "lt": (lambda b: value < b, "<")}
    for key, (holds, symbol) in tests.items():
        bound = meta.get(key)
        if bound is not None and not holds(bound):
            return f"must be {symbol} {bound}, got {value}"
    return None


def choice_text(choices: Sequence[Any]) -> str:
    """Choices as a recipe writes them (``true``, not ``True``)."""
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)


def _any_bool(choices: Sequence[Any], value: Any) -> bool:
    """Whether ``value`` matches a boolean choice as a boolean (so 1 never passes for true)."""
    return any(isinstance(c, bool) and c == value for c in choices)


def describe_fields(params: type | None) -> list[tuple[str, str, str]]:
    """(name, default, help with rules) for each field of a params dataclass, for ``list``."""
    if params is None:
        return []
    rows = []
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rules = [f"{sym} {f.metadata[k]}" for k, sym in
                 (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if f.metadata.get(k) is not None]
        if f.metadata.get("choices"):
            rules.append("one of " + choice_text(f.metadata["choices"]).replace(", ", "|"))
        if f.metadata.get("pattern"):
            rules.append(f"matches {f.metadata['pattern']}")
        text = f.metadata.get("help", "")
        if rules:
            text = f"{text} [{', '.join(rules)}]".strip()
        rows.append((f.name, default, text))
    return rows


def check_json_type(value: Any, hint: Any) -> str | None:
    """What is wrong with the type of a JSON ``value`` for annotation ``hint`` (None: it fits).

    For data that arrives typed (a checkpoint's JSON metadata) rather than written by hand: no
    coercion at all, so ``"1"`` is not an integer and ``"no"`` is not a flag. Integers widen to
    floats; booleans are never numbers; floats must be finite.
    """
    import typing

    if hint is Any or hint is object:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if any(check_json_type(value, arm) is None for arm in args):
            return None
        return f"expected {' or '.join(_json_type_name(a) for a in args)}, got {_shown(value)}"
    if hint is type(None):
        return None if value is None else f"expected null, got {_shown(value)}"
    if origin is list or hint is list:
        if not isinstance(value, list):
            return f"expected a list, got {_shown(value)}"
        for i, item in enumerate(value):
            bad = check_json_type(item, args[0]) if args else None
            if bad:
                return f"item {i}: {bad}"
        return None
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return f"expected a mapping, got {_shown(value)}"
        for key, item in value.items():
            bad = None if isinstance(key, str) else f"key {key!r} is not a string"
            bad = bad or (check_json_type(item, args[1]) if args else None)
            if bad:
                return f"'{key}': {bad}"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {_shown(value)}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            f"expected an integer, got {_shown(value)}"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {_shown(value)}"
        return None if math.isfinite(value) else f"expected a finite number, got {value}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {_shown(value)}"
    if dataclasses.is_dataclass(hint):
        return None if isinstance(value, dict) else f"expected a mapping, got {_shown(value)}"
    return f"cannot check a value of type {hint!r}"


def _json_type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}
    return names.get(hint, "a list" if hint is list or getattr(hint, "__origin__", None) is list else "a mapping")


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"
