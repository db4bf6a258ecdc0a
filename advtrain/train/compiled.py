"""``train.compile``: torch.compile on by default where it pays (CUDA), with an eager fallback.

``auto`` (the default) compiles on CUDA, where short adversarial-training steps are launch-bound
and compilation buys most of the speed, and stays eager elsewhere (on a CPU inductor needs a C++
compiler and gains little). Compilation happens at the first call, so a failure there (no
compiler, a backend error, an operator inductor cannot lower) would otherwise end the run: the
model instead falls back to eager for the rest of the run, once, with a one-line message. The first
compiled call's time (tracing and compiling, plus the step itself) is the warm-up a run reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advtrain.runtime.device import CUDA_OUT_OF_MEMORY

#: Exception classes from these modules are compiler failures at any call (a recompile for a new shape).
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch")


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: true, false, or ``auto`` (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_message(setting: bool | str, device: torch.device) -> str | None:
    """The one line a run prints about compilation (None when it stays eager and was not asked to compile)."""
    if not compile_wanted(setting, device):
        return None
    why = "train.compile=auto on CUDA" if setting == "auto" else "train.compile=true"
    return (f"{why}: compiling the model with torch.compile; the first steps include compilation "
            f"(train.compile=false trains eagerly)")


class CompiledModel(nn.Module):
    """``torch.compile(model)`` that falls back to ``model`` itself when compiling fails.

    ``_orig_mod`` is the eager module, as on torch's own compiled wrapper, so
    :func:`advtrain.runtime.distributed.unwrap` finds the network inside either.

    Attributes:
        warmup_s: Seconds of the first compiled call (None before it, or when that call failed).
        fallback: Why compilation was given up (None while compiled).
    """

    def __init__(self, model: nn.Module, on_fallback: Callable[[str], None]) -> None:
        super().__init__()
        self._orig_mod = model
        # Not registered as a submodule: it wraps the same parameters as _orig_mod.
        object.__setattr__(self, "_compiled", torch.compile(model))
        object.__setattr__(self, "_on_fallback", on_fallback)
        self.warmup_s: float | None = None
        self.fallback: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self.__dict__["_compiled"]
        if compiled is None:
            return self._orig_mod(*args, **kwargs)
        first = self.warmup_s is None
        start = time.perf_counter()
        try:
            out = compiled(*args, **kwargs)
        except CUDA_OUT_OF_MEMORY:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of the first compiled call: compiling failed
            if not first and not type(err).__module__.startswith(_COMPILER_MODULES):
                raise
            self._give_up(err, first)
            return self._orig_mod(*args, **kwargs)
        if first:
            self.warmup_s = time.perf_counter() - start
        return out

    def _give_up(self, err: Exception, first: bool) -> None:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        self.fallback = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        object.__setattr__(self, "_compiled", None)
        when = "at its first call" if first else "recompiling"
        self.__dict__["_on_fallback"](f"torch.compile failed {when} ({self.fallback}); training continues eagerly "
                                      f"(set train.compile=false to skip compiling)")
