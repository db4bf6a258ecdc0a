"""PAT: cross-entropy at the Fast-LPA point (Laidlaw et al. 2021; paper Sec. 4.2, Table 2)."""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from advtrain.attacks.perceptual.fast_lpa import fast_lpa
from advtrain.objectives.objectives import AdversarialObjective


class PerceptualObjective(AdversarialObjective):
    """Perceptual adversarial training; selection features are taken at the Fast-LPA points."""

    attacks: tuple[str, ...] = ("fast_lpa",)

    def __init__(self, params: Any, attack: Any) -> None:
        super().__init__(params, attack)
        backbones: dict[str, nn.Module] = {}  # an ImageNet LPIPS backbone is loaded once per run
        self.attack_fn = functools.partial(fast_lpa, cache=backbones)
