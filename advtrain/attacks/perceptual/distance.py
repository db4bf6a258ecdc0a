"""The LPIPS distance as PAT uses it: normalised deep features, concatenated, ℓ2 distance.

For each layer, activations are divided by their channel-wise ℓ2 norm and by sqrt(H·W), flattened
and concatenated into φ(x); d(x, x') = ‖φ(x) − φ(x')‖₂. No learned per-channel weights. So
d² equals the ``lpips`` package's value with ``lpips=False`` (sum over layers of the spatial mean of
squared normalised differences) for the same backbone — a relation the tests check exactly.

Feature networks: ``self`` (the classifier being trained: the outputs of its stages, read with
forward hooks) or ``alexnet`` / ``vgg`` / ``squeeze`` through the ``lpips`` package's backbones,
which need torchvision's ImageNet weights in the torch hub cache (no silent random backbone).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.errors import UserError

Extractor = Callable[[Tensor], list[Tensor]]

#: torchvision weight files the lpips backbones load (looked up in $TORCH_HOME/hub/checkpoints).
WEIGHT_FILES = {"alexnet": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                "squeeze": "squeezenet1_1-b8a52dc0.pth"}
#: Choices of ``lpips`` for every perceptual attack: the classifier itself, or an ImageNet backbone.
LPIPS_NETWORKS = ("self", *WEIGHT_FILES)


def normalized_features(activations: list[Tensor]) -> Tensor:
    """φ(x): each layer scaled to unit channel norm and by 1/sqrt(H·W), flattened, concatenated."""
    parts = []
    for a in activations:
        a = a.float()
        a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        spatial = a.shape[2] * a.shape[3] if a.dim() == 4 else 1
        parts.append(a.flatten(1) / spatial**0.5)
    return torch.cat(parts, dim=1)


class PerceptualDistance:
    """d(x, x') = ‖φ(x) − φ(x')‖₂ for a feature extractor; ``features`` lets attacks cache φ(x)."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor

    def features(self, x: Tensor) -> Tensor:
        return normalized_features(self.extractor(x))

    def features_and_logits(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """φ(x) and model(x); one forward pass when the distance reads ``model`` itself (LPIPS-self).

        Attacks need both at every step, so for PAT-self this saves a third of the passes.
        """
        if isinstance(self.extractor, SelfExtractor) and self.extractor.model is model:
            activations, logits = self.extractor.with_logits(x)
            return normalized_features(activations), logits
        return self.features(x), model(x)

    def __call__(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return (self.features(x) - self.features(x_adv)).norm(dim=1)


def _stage_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs PAT's ``self`` distance reads, for the architectures we know."""
    net = getattr(model, "net", model)
    stages = getattr(net, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages) > 0:  # advtrain's CIFAR ResNets
        return list(stages)
    layers = [getattr(net, f"layer{i}", None) for i in range(1, 5)]
    if all(layer is not None for layer in layers):  # timm / torchvision ResNets
        return layers  # type: ignore[return-value]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):  # small_cnn and VGG-like nets: every ReLU
        relus = [m for m in features if isinstance(m, nn.ReLU)]
        if relus:
            return relus
    raise UserError(f"LPIPS 'self' does not know the stages of model '{getattr(model, 'model_name', type(net))}'; "
                    "use attack.lpips=alexnet (or vgg/squeeze) instead")


class SelfExtractor:
    """Stage activations of the classifier itself (PAT-self), captured with forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = _stage_modules(model)

    def with_logits(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        captured: list[Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in self.modules]
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return captured, logits

    def __call__(self, x: Tensor) -> list[Tensor]:
        return self.with_logits(x)[0]


def self_extractor(model: nn.Module) -> SelfExtractor:
    """The ``self`` feature network: ``model``'s own stages (fails clearly for unknown architectures)."""
    return SelfExtractor(model)


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


class LpipsBackbone(nn.Module):
    """An ImageNet backbone from the ``lpips`` package with its input scaling, inputs in [0,1]."""

    def __init__(self, name: str, *, random_weights: bool = False) -> None:
        super().__init__()
        import lpips

        if name not in WEIGHT_FILES:
            raise UserError(f"unknown LPIPS network '{name}' (choices: self, {', '.join(WEIGHT_FILES)})")
        weights = hub_checkpoint_dir() / WEIGHT_FILES[name]
        if not random_weights and not weights.is_file():
            raise UserError(
                f"LPIPS network '{name}' needs torchvision's ImageNet weights '{WEIGHT_FILES[name]}' in "
                f"'{weights.parent}' (set TORCH_HOME to move it). Copy the file there (it is downloaded by "
                f"torchvision on a machine with internet), or use attack.lpips=self.")
        constructors = {"alexnet": lpips.pn.alexnet, "vgg": lpips.pn.vgg16, "squeeze": lpips.pn.squeezenet}
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore")
            self.net = constructors[name](pretrained=not random_weights, requires_grad=False)
        self.scaling = lpips.ScalingLayer()
        self.eval()

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.net(self.scaling(2 * x - 1)))


def build_distance(kind: str, model: nn.Module, cache: dict[str, nn.Module] | None = None) -> PerceptualDistance:
    """The distance for ``attack.lpips``: ``self`` reads ``model``; other names load a backbone once."""
    if kind == "self":
        return PerceptualDistance(self_extractor(model))
    cache = cache if cache is not None else {}
    if kind not in cache:
        cache[kind] = LpipsBackbone(kind)
    backbone = cache[kind]
    device = next(model.parameters()).device
    backbone.to(device)
    return PerceptualDistance(backbone)
