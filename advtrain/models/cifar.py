"""Small-image architectures registered into timm's model registry.

CIFAR-style networks keep the full 32×32 resolution in the stem (a 3×3 convolution, no max-pool),
as in the ResNets of the adversarial-training literature. All variants are rows of ``_VARIANTS``
over one builder; each follows timm's head API (``forward_features``, ``forward_head``,
``get_classifier``, ``reset_classifier``, ``num_features``), so ``timm.create_model`` builds them
and the rest of advtrain treats them exactly like a stock timm model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from advtrain.errors import UserError

# Keyword arguments timm's create_model passes to every entrypoint; our models have no pretrained
# configs, so they are dropped.
_TIMM_EXTRAS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add, ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, cout), nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck block: 1×1 reduce, 3×3, 1×1 expand (×4)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016): BN-ReLU-conv-BN-ReLU-conv, add.

    When the shape changes, the 1×1 projection reads the *activated* input. With widened stages this
    is exactly the WideResNet block of Zagoruyko & Komodakis, so WRN-34-10 reuses it.
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3x3(planes, planes)
        self.shortcut = _projection(cin, planes, stride, norm=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def _projection(cin: int, cout: int, stride: int, *, norm: bool) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if norm else conv


_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock}


class _HeadMixin:
    """timm's classifier-head API over ``global_pool`` → dropout → ``fc``."""

    num_features: int
    num_classes: int
    drop_rate: float
    fc: nn.Module
    training: bool

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the last layer (``num_classes=0`` makes it an identity, as in timm)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only average pooling is supported, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


class CifarResNet(_HeadMixin, nn.Module):
    """ResNet / PreAct-ResNet / WideResNet for small images, configured by one variant row.

    Args:
        block: ``basic``, ``bottleneck`` or ``preact``.
        layers: Blocks per stage.
        widths: Planes per stage (output channels are ``planes × expansion``).
        stem_width: Channels of the 3×3 stem convolution.
        strides: Stride of the first block of each stage (default 1, then 2).
        num_classes: Size of the last layer.
        in_chans: Input channels (1 for grayscale).
        drop_rate: Dropout before the last layer.
    """

    def __init__(self, block: str, layers: tuple[int, ...], widths: tuple[int, ...], stem_width: int = 64,
                 strides: tuple[int, ...] | None = None, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        block_cls = _BLOCKS[block]
        strides = strides or (1,) + (2,) * (len(layers) - 1)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.preact = block == "preact"
        self.conv1 = _conv3x3(in_chans, stem_width)
        # Pre-activation nets normalise at the start of every block, so the stem has no BN-ReLU.
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
        stages: list[nn.Module] = []
        cin = stem_width
        for n, planes, stride in zip(layers, widths, strides, strict=True):
            blocks = []
            for i in range(n):
                blocks.append(block_cls(cin, planes, stride if i == 0 else 1))
                cin = planes * block_cls.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # ... and instead end with one, so the embedding is activated like the post-act nets'.
        self.final_norm = nn.BatchNorm2d(cin) if self.preact else nn.Identity()
        self.num_features = cin
        self.fc: nn.Module = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x))
        x = self.stages(x)
        return F.relu(self.final_norm(x)) if self.preact else x


class SmallCNN(_HeadMixin, nn.Module):
    """Three 3×3 convolutions (32-64-128) for 8×8 digits or 28×28 MNIST-like images (~94k params)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, norm: bool = True) -> None:
        super().__init__()
        self.num_classes, self.drop_rate, self.num_features = num_classes, drop_rate, 128

        def unit(cin: int, cout: int) -> list[nn.Module]:
            # norm=False (model.kwargs={norm: false}) gives a BatchNorm-free net, whose outputs do not
            # depend on how a batch is split (used to test data-parallel training against one process).
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)
            return [conv, nn.BatchNorm2d(cout) if norm else nn.Identity(), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*unit(in_chans, 32), *unit(32, 64), nn.MaxPool2d(2), *unit(64, 128))
        self.fc: nn.Module = nn.Linear(128, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


# Variants as data: name → constructor arguments of one builder.
_VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18_cifar": dict(block="basic", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    "resnet50_cifar": dict(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "preact_resnet18_cifar": dict(block="preact", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    # WRN-d-k: (d - 4) / 6 = 5 blocks per stage, widths 16k/32k/64k, a 16-channel stem.
    "wrn34_10_cifar": dict(block="preact", layers=(5, 5, 5), widths=(160, 320, 640), stem_width=16),
    "resnet_tiny_cifar": dict(block="basic", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8),
}

SUMMARIES: dict[str, str] = {
    "resnet18_cifar": "ResNet-18 for 32×32 images (3×3 stem, no max-pool; 11M params)",
    "resnet50_cifar": "ResNet-50 (bottleneck) for 32×32 images (23M params)",
    "preact_resnet18_cifar": "Pre-activation ResNet-18 for 32×32 images (11M params)",
    "wrn34_10_cifar": "WideResNet-34-10 for 32×32 images (46M params), as in TRADES/Madry",
    "resnet_tiny_cifar": "a tiny ResNet (widths 8-64, one block per stage) for tests",
    "small_cnn": "a three-layer CNN for 8×8 digits and 28×28 MNIST-like images (94k params)",
}


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    for key in _TIMM_EXTRAS:
        kwargs.pop(key, None)
    if pretrained:
        raise UserError(f"model '{name}' has no pretrained weights (advtrain's small-image models are "
                        "trained from scratch); set model.pretrained=false")
    if name == "small_cnn":
        return SmallCNN(**kwargs)
    return CifarResNet(**_VARIANTS[name], **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("resnet18_cifar", pretrained, **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("resnet50_cifar", pretrained, **kwargs)


@register_model
def preact_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("preact_resnet18_cifar", pretrained, **kwargs)


@register_model
def wrn34_10_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("wrn34_10_cifar", pretrained, **kwargs)


@register_model
def resnet_tiny_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("resnet_tiny_cifar", pretrained, **kwargs)


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("small_cnn", pretrained, **kwargs)


NAMES: tuple[str, ...] = tuple(SUMMARIES)
