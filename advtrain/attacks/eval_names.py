"""The one grammar of evaluation attack names: ``<family>[<steps>][x<restarts>][-<variant>][@<bound>]``.

``pgd50x10-l2`` is family ``pgd``, steps ``50``, restarts ``10``, variant ``l2``; ``lpa40-alexnet@0.25``
is family ``lpa``, steps ``40``, variant ``alexnet``, bound 0.25. The grammar only splits a name into
its parts; what each part means for a family (whether steps are required, which variants exist) is
data in :data:`advtrain.attacks.families.FAMILIES`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from advtrain.errors import UserError
from advtrain.params import FractionError, parse_number

_NAME = re.compile(r"(?P<family>[a-z]+)(?P<steps>\d+)?(?:x(?P<restarts>\d+))?(?:-(?P<variant>[a-z0-9]+))?")
#: Names longer than this are echoed cut short in messages (and get no did-you-mean search).
SHOWN = 60


def shown(text: str) -> str:
    """``text`` as a message quotes it: cut to :data:`SHOWN` characters."""
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


@dataclass(frozen=True)
class AttackName:
    """A name split into its parts, as written (digits unconverted: their bounds are the family's business)."""

    written: str
    key: str
    family: str
    steps: str | None
    restarts: str | None
    variant: str | None
    bound: float | None
    bound_text: str | None


def split_bound(written: str) -> tuple[str, float | None, str | None]:
    """``'aa-l2@1'`` → (``'aa-l2'``, 1.0, ``'1'``); names without ``@`` pass through (lower-cased)."""
    key = written.strip().lower()
    if "@" not in key:
        return key, None, None
    base, _, text = key.partition("@")
    try:
        value = parse_number(text.strip())
    except FractionError as err:
        raise UserError(f"attack '{shown(written)}': {err}") from None
    if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
        raise UserError(f"attack '{shown(written)}': the bound after '@' must be a number > 0 such as 8/255 "
                        f"or 0.5, got '{shown(text)}'")
    return base.strip(), value, text.strip()


def parse_name(written: str) -> AttackName | None:
    """The parts of ``written``; None when it does not have the grammar's shape."""
    key, bound, bound_text = split_bound(written)
    match = _NAME.fullmatch(key)
    if match is None:
        return None
    return AttackName(written.strip(), key, match["family"], match["steps"], match["restarts"], match["variant"],
                      bound, bound_text)


__all__ = ["AttackName", "parse_name", "shown", "split_bound"]
