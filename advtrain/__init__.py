"""advtrain: declarative, config-driven efficient adversarial training.

Adversarial coreset selection (Dolatabadi et al., ECCV 2022) on top of standard adversarial
training objectives, driven by YAML recipes and a Typer CLI.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
