"""Last-layer gradient features shaped like a trained network's, for the solvers' tests and benchmarks.

Unit-normal rows, or gradients on embeddings unrelated to the class, hide what makes real features
hard: a trained network's penultimate embeddings cluster by class (neural collapse), its logits are
mostly right and confident, so its per-sample cross-entropy gradients e ⊗ [1, h] fall into C narrow
cones, rank deficient twice over (Σ_c e_c = 0, and embeddings of low intrinsic dimension). A
non-negative match that is easy on random rows can leave such a cone (issue 26). Each structure
below is one way a trained network's embeddings look; none is a dataset, and nothing here is used
in training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advtrain.objectives.lastlayer import cross_entropy_grads

STRUCTURES = ("collapsed", "lowrank", "shared")


def clustered_features(n: int, classes: int = 10, hidden: int = 512, *, structure: str = "lowrank",
                       rank: int = 8, spread: float = 0.3, confidence: float = 8.0,
                       seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sample CE gradients of a linear head on class-clustered ReLU embeddings: ``(features, labels)``.

    Labels come in contiguous blocks (rows c·n/C … (c + 1)·n/C − 1 have label c). Embeddings are
    h = relu(μ_y + spread·u) with class means μ_c = relu(N(0, I)) and the within-class part u:

    - ``collapsed``: u isotropic in all ``hidden`` directions (full rank, tight clusters);
    - ``lowrank``: u in a ``rank``-dimensional subspace of its own class (each class a thin slab);
    - ``shared``: u in one ``rank``-dimensional subspace common to every class.

    The head is trained-like: W_c = μ_c/‖μ_c‖, logits = ``confidence``·W h/‖h‖, so most samples are
    classified right with confidence and e = softmax − onehot is small and aligned with the class.

    Returns:
        float32 features (n, C(1 + H)) in the layout of :func:`cross_entropy_grads`, int64 labels (n,).
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) * classes // n
    means = torch.relu(torch.randn(classes, hidden, generator=gen))
    if structure == "collapsed":
        within = torch.randn(n, hidden, generator=gen)
    elif structure == "lowrank":
        basis = torch.randn(classes, rank, hidden, generator=gen) / rank**0.5
        within = torch.einsum("nr,nrh->nh", torch.randn(n, rank, generator=gen), basis[labels])
    else:
        basis = torch.randn(rank, hidden, generator=gen) / rank**0.5
        within = torch.randn(n, rank, generator=gen) @ basis
    h = torch.relu(means[labels] + spread * within)
    head = means / means.norm(dim=1, keepdim=True)
    logits = confidence * (h @ head.T) / h.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return cross_entropy_grads(logits, h, labels), labels
