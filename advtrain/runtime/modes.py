"""Module modes: run a model in eval mode for a block and give every submodule its own flag back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, then restore every submodule's own ``training`` flag.

    Restoring per submodule (not ``model.train(was_training)``) keeps deliberate mixtures intact,
    such as a frozen BatchNorm in eval mode inside a model that trains. Restored on exceptions too.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
