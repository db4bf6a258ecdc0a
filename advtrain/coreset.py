"""The coreset: one name for the weighted subset a selector returns, the loop trains on and a run saves."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Coreset:
    """A weighted subset of the training split.

    Attributes:
        indices: Selected sample indices into the training split (ascending, unique, CPU int64).
        weights: Weight of each selected sample (float32, > 0; about the number of samples it stands for).
        epoch: The epoch whose selection pass chose it (None outside a training run).
        labels: Labels of the selected samples, when the selection pass knows them.
    """

    indices: Tensor
    weights: Tensor
    epoch: int | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class SelectionTiming:
    """Seconds of one selection pass: adversarial points, last-layer gradients, the solver, in all."""

    attack_s: float = 0.0
    features_s: float = 0.0
    solver_s: float = 0.0
    total_s: float = 0.0

    def record(self, size: int) -> dict[str, float]:
        """The ``selection`` entry of an epoch's metrics line (and of ``advtrain select``'s .npz)."""
        return {"attack_s": self.attack_s, "features_s": self.features_s, "solver_s": self.solver_s,
                "total_s": self.total_s, "size": int(size)}
