"""The threat model of an attack as one small record: which metric, which bound.

Every attack's params answer ``params.threat()`` (and so does every evaluation attack), so the
readers of ε / norm / bound — evaluation defaults, the overfit probe, reports, compare — ask one
question instead of probing attributes (``eps`` for ℓp balls, ``bound`` for LPIPS, flow and colour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from advtrain.params import format_number

#: The ℓp metrics: the ones ε, α and ``--eps``/``--alpha`` are written in.
LP_NORMS = ("linf", "l2")
#: How each metric is written for people (ℓ∞, LPIPS, ...) and in reports' ``threat_model`` (Linf, ...).
SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2", "lpips": "LPIPS", "flow": "flow", "color": "colour"}
REPORT_NAME = {"linf": "Linf", "l2": "L2", "lpips": "LPIPS", "flow": "StAdv", "color": "ReColorAdv"}


@dataclass(frozen=True)
class Threat:
    """A threat model: ``metric`` (linf, l2, lpips, flow, color), its ``bound`` and how it was written.

    ``norm`` is the ℓp norm (None for the other metrics); ``eps`` is the bound under its usual name.
    """

    metric: str
    bound: float
    text: str | None = None

    @property
    def norm(self) -> str | None:
        return self.metric if self.metric in LP_NORMS else None

    @property
    def eps(self) -> float:
        return self.bound

    @property
    def is_lp(self) -> bool:
        return self.metric in LP_NORMS

    def written(self) -> str:
        """The bound as written (``8/255``), else in the shortest exact form."""
        return self.text or format_number(self.bound)

    def describe(self) -> str:
        """``ℓ∞ ε=8/255``, ``LPIPS ε=0.5``."""
        return f"{SYMBOL.get(self.metric, self.metric)} ε={self.written()}"

    def same_ball(self, other: Threat | None) -> bool:
        """Same metric and the same bound (to float round-off)."""
        return other is not None and self.metric == other.metric and \
            math.isclose(self.bound, other.bound, rel_tol=1e-6, abs_tol=1e-9)


class HasThreat(Protocol):
    """What every attack's params provide."""

    def threat(self) -> Threat: ...


def report_name(metrics: set[str]) -> str:
    """``threat_model`` of a report: ``L2+Linf``, ``none`` for no attack."""
    return "+".join(sorted(REPORT_NAME.get(m, m) for m in metrics)) or "none"


__all__ = ["LP_NORMS", "SYMBOL", "HasThreat", "Threat", "report_name"]
