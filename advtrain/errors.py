"""User-facing errors.

Anything a user can cause (a bad recipe, a missing file, a checkpoint from another model) raises
a :class:`UserError`. The CLI turns it into one readable panel and exit code 2, never a
traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole explanation."""

    title = "advtrain error"


class RecipeError(UserError):
    """One or more problems in a recipe, each with its key path."""

    title = "invalid recipe"

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        head = f"{len(self.problems)} problem(s){where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class DataError(UserError):
    """A dataset is missing, malformed or inconsistent with the recipe."""

    title = "data error"


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the recipe/model."""

    title = "checkpoint error"


class DivergenceError(UserError):
    """Training produced non-finite values; the last good checkpoint was kept."""

    title = "training diverged"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""
