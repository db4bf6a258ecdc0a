"""Perceptual adversarial training (Laidlaw et al., ICLR 2021): LPIPS distance and Fast-LPA."""

from advtrain.attacks.perceptual.distance import PerceptualDistance, normalized_features
from advtrain.attacks.perceptual.fast_lpa import FastLPAParams, fast_lpa

__all__ = ["FastLPAParams", "PerceptualDistance", "fast_lpa", "normalized_features"]
