"""``train.compile``: torch.compile on by default where it pays (CUDA), with an eager fallback.

``auto`` (the default) compiles on CUDA, where short adversarial-training steps are launch-bound
and compilation buys most of the speed, and stays eager elsewhere (on a CPU inductor needs a C++
compiler and gains little). Compilation happens at the first call, so a failure there (no
compiler, a backend error, an operator inductor cannot lower) would otherwise end the run: the
model instead falls back to eager for the rest of the run, once, with a one-line message. The first
compiled call's time (tracing and compiling, plus the step itself) is the warm-up a run reports.

``train.compile_mode`` is torch.compile's ``mode``. ``reduce-overhead`` and ``max-autotune`` replay
CUDA graphs (cudagraph trees): a graph's outputs live in a memory pool that the next replay
overwrites, and a new replay generation begins at each call unless a backward is still pending.
An adversarial-training step calls the model many times (each attack step: forward, then
``autograd.grad`` w.r.t. the input; then the training forward and its backward), so:

* outputs are cloned out of the pool at each call (the logits: batch × classes, a negligible
  copy), so whatever an attack or objective keeps across calls (clean logits, a loss) stays valid;
* :func:`mark_step_begin` is called once at the start of each training step, by the loop, where
  every backward of the previous step has run: it frees that step's graph memory even if some
  forward's backward was never called (a forward kept only for a statistic). Marking at every
  call instead would be wrong: between a forward and its backward (the training forward, or the
  two forwards of TRADES) it would free the activations the backward still needs.

A CUDA-graph failure after the first call (recording happens on a later call than compiling)
also falls back to eager.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advtrain.config.schema import CUDA_GRAPH_MODES
from advtrain.runtime.device import CUDA_OUT_OF_MEMORY

#: Exception classes from these modules are compiler failures at any call (a recompile for a new shape).
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch")
#: Any exception raised from inside this torch module is a CUDA-graph failure (it raises builtin exceptions).
_CUDAGRAPH_FILE = "cudagraph_trees"


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: true, false, or ``auto`` (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_message(setting: bool | str, device: torch.device, mode: str = "default") -> str | None:
    """The one line a run prints about compilation (None when it stays eager and was not asked to compile)."""
    if not compile_wanted(setting, device):
        return None
    why = "train.compile=auto on CUDA" if setting == "auto" else "train.compile=true"
    how = "" if mode == "default" else f" (mode {mode})"
    graphs = " (no CUDA graphs off CUDA)" if mode in CUDA_GRAPH_MODES and device.type != "cuda" else ""
    return (f"{why}: compiling the model with torch.compile{how}{graphs}; the first steps include compilation "
            f"(train.compile=false trains eagerly)")


def mark_step_begin(model: nn.Module) -> None:
    """Start a training step: a model compiled with CUDA graphs may reuse the previous step's graph memory."""
    if isinstance(model, CompiledModel) and model.mode in CUDA_GRAPH_MODES and model.fallback is None:
        torch.compiler.cudagraph_mark_step_begin()


def _raised_in(err: BaseException, fragment: str) -> bool:
    """Whether a frame of ``err``'s traceback is in a file whose path contains ``fragment``."""
    tb = err.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _out_of_graph_pool(out: Any) -> Any:
    """CUDA tensors of ``out`` cloned (autograd flows through the clone), so a later replay cannot overwrite them."""
    if isinstance(out, torch.Tensor):
        return out.clone() if out.is_cuda else out
    if isinstance(out, tuple):
        return tuple(_out_of_graph_pool(o) for o in out)
    if isinstance(out, list):
        return [_out_of_graph_pool(o) for o in out]
    if isinstance(out, dict):
        return {k: _out_of_graph_pool(v) for k, v in out.items()}
    return out


class CompiledModel(nn.Module):
    """``torch.compile(model)`` that falls back to ``model`` itself when compiling fails.

    ``_orig_mod`` is the eager module, as on torch's own compiled wrapper, so
    :func:`advtrain.runtime.distributed.unwrap` finds the network inside either.

    Attributes:
        mode: torch.compile's mode (``train.compile_mode``).
        warmup_s: Seconds of the first compiled call (None before it, or when that call failed).
        fallback: Why compilation was given up (None while compiled).
    """

    def __init__(self, model: nn.Module, on_fallback: Callable[[str], None], mode: str = "default") -> None:
        super().__init__()
        self._orig_mod = model
        # Not registered as a submodule: it wraps the same parameters as _orig_mod.
        object.__setattr__(self, "_compiled", torch.compile(model, mode=mode))
        object.__setattr__(self, "_on_fallback", on_fallback)
        self.mode = mode
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
            if not first and not type(err).__module__.startswith(_COMPILER_MODULES) \
                    and not _raised_in(err, _CUDAGRAPH_FILE):
                raise
            self._give_up(err, first)
            return self._orig_mod(*args, **kwargs)
        if first:
            self.warmup_s = time.perf_counter() - start
        return _out_of_graph_pool(out) if self.mode in CUDA_GRAPH_MODES else out

    def _give_up(self, err: Exception, first: bool) -> None:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        self.fallback = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        object.__setattr__(self, "_compiled", None)
        when = "at its first call" if first else "recompiling"
        self.__dict__["_on_fallback"](f"torch.compile failed {when} ({self.fallback}); training continues eagerly "
                                      f"(set train.compile=false to skip compiling)")
