"""One registry per component kind (fvcore-style, with did-you-mean hints).

A registry maps a short name (as written in recipes) to a constructor and the dataclass holding
that component's parameters: ``REGISTRY.get(name).build(params, **deps)`` is the one way to make a
component, and what it returns is the component itself (an attack, an objective, a selector, ...).
Registering a name twice is an error, and an unknown name lists the choices and the closest match,
so a typo in a recipe never silently picks something else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from advtrain.errors import UserError, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, constructor, params dataclass and one-line summary."""

    name: str
    constructor: Callable[..., Any]
    params: type | None
    summary: str

    def default_params(self) -> Any:
        """A params instance with every default filled in (None when it takes no params)."""
        return self.params() if self.params is not None else None

    def build(self, params: Any = None, /, **deps: Any) -> Any:
        """The component, from its validated ``params`` (default: every default) and what it needs
        from other components (``deps``, e.g. an objective's attack)."""
        return self.constructor(self.default_params() if params is None else params, **deps)


class UnknownComponentError(UserError):
    """A name that is not registered in a registry."""

    title = "unknown component"


class Registry:
    """Names → constructors for one kind of component (datasets, attacks, selectors, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`add`."""

        def decorate(constructor: F) -> F:
            self.add(name, constructor, params)
            return constructor

        return decorate

    def add(self, name: str, constructor: Callable[..., Any], params: type | None = None) -> None:
        """Register ``constructor`` under ``name``; a second registration of a name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"params of {self.kind} '{name}' must be a dataclass")
        doc = (constructor.__doc__ or "").strip().splitlines()
        self._entries[name] = Entry(name, constructor, params, doc[0] if doc else "")

    def get(self, name: str) -> Entry:
        """The entry for ``name``; raises :class:`UnknownComponentError` with the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """The message for an unknown ``name``: the closest match and every choice."""
        hint = did_you_mean(str(name), self._entries)
        return f"unknown {self.kind} '{name}'{hint} (choices: {', '.join(self.names())})"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
