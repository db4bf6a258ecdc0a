"""PAT: cross-entropy at the Fast-LPA point (Laidlaw et al. 2021; paper Sec. 4.2, Table 2)."""

from __future__ import annotations

from typing import ClassVar

from advtrain.objectives.objectives import AdversarialObjective


class PerceptualObjective(AdversarialObjective):
    """Perceptual adversarial training; selection features are taken at the Fast-LPA points."""

    attacks: ClassVar[tuple[str, ...]] = ("fast_lpa",)
    #: Fast-LPA with ``lpips: self`` measures distances with the model's own stages: it needs the model itself.
    attack_on_view: ClassVar[bool] = False
