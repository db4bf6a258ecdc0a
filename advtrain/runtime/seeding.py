"""Seeding: every random stream of a run derives from the recipe seed and a named purpose.

Explicit generators (data order, augmentation, solvers) and per-purpose seeds (``("epoch", 3)``,
``("select", 5)``) keep a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from the run seed and a purpose (e.g. ``("epoch", 3)``)."""
    text = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` (explicit randomness, never the global one)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
