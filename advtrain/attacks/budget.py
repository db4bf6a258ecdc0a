"""The bounds of every attack budget (steps, restarts, λ rounds), wherever it is written.

A budget comes from an evaluation name (``pgd50x10``, ``aa20``), a flag (``--steps``), a recipe
key (``attack.steps``, ``eval.attacks``) or a stored recipe. All of them are checked against the
one table here, so none can ask for unbounded work: ``pgd99999999999999999999`` is refused with
the same range as ``--steps``. The upper bounds are far above any published evaluation (PGD-1000,
AutoAttack's 100 iterations, 10 restarts) and small enough that a typo cannot run for days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advtrain.errors import UserError
from advtrain.params import param


@dataclass(frozen=True)
class Budget:
    """One budget kind: its key and its allowed range (inclusive)."""

    key: str
    low: int
    high: int

    def range_text(self) -> str:
        return f"{self.low}..{self.high}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not an allowed budget, or None."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.key} must be an integer in {self.range_text()}, got {value!r}"
        if not self.low <= value <= self.high:
            return f"{self.key} must be in {self.range_text()}, got {value}"
        return None

    def check(self, value: Any, where: str) -> int:
        """``value`` if allowed; else a :class:`UserError` naming ``where`` (a flag, key or attack name)."""
        problem = self.problem(value)
        if problem:
            raise UserError(f"{where}: {problem} (the same range holds for attack names, --{self.key} and "
                            f"recipe keys)")
        return int(value)

    def from_digits(self, digits: str, where: str) -> int:
        """A budget written as digits in a name; overlong digit strings are refused before conversion."""
        if len(digits) > len(str(self.high)):
            raise UserError(f"{where}: {self.key} must be in {self.range_text()}, got {digits[:12]}"
                            f"{'…' if len(digits) > 12 else ''} (the same range holds for attack names, "
                            f"--{self.key} and recipe keys)")
        return self.check(int(digits), where)

    def param(self, default: int, *, low: int | None = None, help: str = "") -> Any:  # noqa: A002
        """A params field with this budget's bounds (``low`` where 0 means something, e.g. PGD's start only)."""
        return param(default, ge=self.low if low is None else low, le=self.high, help=help)


STEPS = Budget("steps", 1, 10_000)
RESTARTS = Budget("restarts", 1, 1_000)
#: LPA's λ rounds (λ ×10 after each: beyond 30 rounds λ overflows float32 anyway).
ROUNDS = Budget("rounds", 1, 30)

__all__ = ["RESTARTS", "ROUNDS", "STEPS", "Budget"]
