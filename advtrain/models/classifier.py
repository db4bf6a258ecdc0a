"""The model advtrain trains: input normalisation, then a timm network.

Images stay in [0,1] everywhere outside the model, so attacks clip and measure ε in pixel units;
the dataset's mean/std live here as buffers (saved with the weights). The coreset code needs the
penultimate embedding and the logits of the same forward pass, and the last layer as a Linear, to
form per-sample last-layer gradients — :meth:`Classifier.logits_and_embedding` and
:attr:`Classifier.last_linear` give exactly that for any timm model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean/std as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Module):
    """``normalize`` then ``net`` (a timm model with a final ``nn.Linear``).

    Args:
        net: A model following timm's head API (``forward_features``, ``forward_head``,
            ``get_classifier``).
        mean: Per-channel mean of the training images, in [0,1] units.
        std: Per-channel standard deviation.
        model_name: The name it was built from; saved in checkpoints to refuse mismatched loads.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], model_name: str) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.model_name = model_name

    @property
    def last_linear(self) -> nn.Linear:
        """The final layer; the coreset features are gradients with respect to it."""
        head = self.net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"model '{self.model_name}' ends in {type(head).__name__}, not nn.Linear")
        return head

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`embed` (timm's ``num_features`` differs when a head has its own layers)."""
        return self.last_linear.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits for images in [0,1]."""
        return self.net(self.normalize(x))

    def embed(self, x: Tensor) -> Tensor:
        """The penultimate embedding (N × embedding_dim), i.e. the input of :attr:`last_linear`."""
        return self.net.forward_head(self.net.forward_features(self.normalize(x)), pre_logits=True)

    def logits_and_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and embedding from one forward pass (``logits = last_linear(embedding)``)."""
        emb = self.embed(x)
        return self.last_linear(emb), emb
