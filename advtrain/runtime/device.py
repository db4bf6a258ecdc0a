"""Device and precision: which device a run uses, autocast, memory format, cuDNN autotuning."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from advtrain.errors import UserError

#: The device names advtrain runs on: the recipe's ``device`` key (config.schema.RecipeTop) allows the same.
DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d{1,2})?|mps")


def device_name_problem(spec: object) -> str | None:
    """Why ``spec`` is not a device advtrain runs on (torch also knows meta, xla, ... which cannot train here)."""
    if isinstance(spec, str) and DEVICE_NAMES.fullmatch(spec.strip().lower()):
        return None
    return f"'{spec}' is not a device advtrain runs on; use auto, cpu, cuda, cuda:N or mps"


def pick_device(spec: str) -> torch.device:
    """``auto`` → CUDA when present, then MPS, else CPU; explicit names are checked."""
    problem = device_name_problem(spec)
    if problem:
        raise UserError(f"device {problem}.")
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"device '{spec}' is not a device name; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' was asked for but CUDA is not available here; use "
                            f"device=cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{spec}': only {torch.cuda.device_count()} CUDA device(s) exist.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device '{spec}' was asked for but MPS is not available here; use device=cpu.")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (None = fp32). ``auto`` is bf16 on CUDA only."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise UserError("precision=fp16 needs CUDA (it uses a gradient scaler); use bf16 or fp32.")
    return torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision when ``dtype`` is set, a no-op otherwise."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


# ---------------------------------------------------------------------------------------------
# The CUDA-only branches, named in one place and kept thin: everything else in the training path
# (bf16 autocast, channels_last, the on-device data source, torch.compile, the gradient scaler)
# is device-agnostic and runs in the CPU test suite. The others live in train/distributed.py
# (NCCL and one GPU per rank) and are marked there.

#: Raised by a CUDA allocation that does not fit; the loop turns it into advice (batch size, bf16).
CUDA_OUT_OF_MEMORY = torch.cuda.OutOfMemoryError


def prefers_channels_last(device: torch.device, requested: bool | None) -> bool:
    """``train.channels_last``: as asked, else on CUDA only (cuDNN's fast convolution layout)."""
    return requested if requested is not None else device.type == "cuda"


def keeps_data_on_device(device: torch.device, requested: bool) -> bool:
    """``train.data_on_device`` takes effect on CUDA (on the CPU the data already is on the device)."""
    return requested and device.type == "cuda"


def enable_cuda_autotuning(device: torch.device) -> None:
    """Let cuDNN time its convolution algorithms for the (fixed) training shapes. CUDA only."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
