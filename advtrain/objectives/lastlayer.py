"""Closed-form per-sample gradients of the loss w.r.t. the last Linear layer (Danskin features).

With logits z = W e + b and p = softmax(z), cross-entropy has ∂ℓ/∂b = p − y and
∂ℓ/∂W = (p − y) ⊗ e. These need one forward pass and no per-sample autograd, which is what makes
selecting over the whole training set cheap (paper Sec. 3.3, "gradient approximation"). Features
are laid out as ``[∂b (C), ∂W row-major (C·d)]``, the order of ``W.grad.flatten()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from advtrain.attacks.losses import kl_per_sample


def _pack(bias_grad: Tensor, weight_grad: Tensor | None) -> Tensor:
    if weight_grad is None:
        return bias_grad
    return torch.cat([bias_grad, weight_grad.flatten(1)], dim=1)


def cross_entropy_grads(logits: Tensor, embedding: Tensor, y: Tensor, *, bias_only: bool = False) -> Tensor:
    """Per-sample ∇_(b,W) CE(W e + b, y), shape (N, C) or (N, C + C·d)."""
    residual = logits.float().softmax(dim=1) - F.one_hot(y, logits.shape[1]).float()
    weight = None if bias_only else residual[:, :, None] * embedding.float()[:, None, :]
    return _pack(residual, weight)


def trades_grads(
    clean_logits: Tensor,
    clean_embedding: Tensor,
    adv_logits: Tensor,
    adv_embedding: Tensor,
    y: Tensor,
    beta: float,
    *,
    bias_only: bool = False,
) -> Tensor:
    """Per-sample last-layer gradient of CE(f(x), y) + β·KL(p(x) ‖ p(x_adv)), β applied once.

    Both forward passes share the last layer, so the gradient has a clean-side term (through
    f(x), in CE and in the first KL argument) times e(x) and an adversarial-side term times
    e(x_adv). ∂KL/∂z_adv = q − p and ∂KL/∂z_clean = p ⊙ (log p − log q − KL).
    """
    log_p = clean_logits.float().log_softmax(dim=1)
    log_q = adv_logits.float().log_softmax(dim=1)
    p, q = log_p.exp(), log_q.exp()
    kl = kl_per_sample(clean_logits, adv_logits)[:, None]
    onehot = F.one_hot(y, clean_logits.shape[1]).float()
    clean_coef = (p - onehot) + beta * p * (log_p - log_q - kl)
    adv_coef = beta * (q - p)
    bias = clean_coef + adv_coef
    if bias_only:
        return bias
    weight = clean_coef[:, :, None] * clean_embedding.float()[:, None, :] \
        + adv_coef[:, :, None] * adv_embedding.float()[:, None, :]
    return _pack(bias, weight)
