"""Data-parallel plumbing for ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

One process per device. ``data.batch_size`` stays the *global* batch: each rank trains on its
slice of every global batch and the loss is normalised by the global weight sum, so N processes
take the same optimisation steps as one process with the same recipe. Only rank 0 writes files
and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from advtrain.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (safe before init)."""
    return int(os.environ.get("RANK", "0")) == 0


def init(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each rank takes ``cuda:LOCAL_RANK`` (a CUDA-only branch: NCCL)."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                            f"use --nproc_per_node ≤ {torch.cuda.device_count()}")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, tensor: Tensor) -> Tensor:
    """Sum over ranks (in place); identity when not distributed."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_rows(ctx: DistContext, tensor: Tensor) -> Tensor:
    """Concatenate each rank's rows in rank order (ranks may hold different row counts)."""
    if not ctx.enabled:
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world)]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])


def broadcast_tensor(ctx: DistContext, tensor: Tensor | None, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Rank 0's 1-D tensor on every rank (other ranks pass None)."""
    if not ctx.enabled:
        assert tensor is not None
        return tensor
    size = torch.tensor([len(tensor) if tensor is not None else 0], device=device)
    dist.broadcast(size, src=0)
    out = tensor.to(device=device, dtype=dtype) if ctx.is_main else torch.zeros(int(size), dtype=dtype,
                                                                                device=device)
    dist.broadcast(out, src=0)
    return out


def shard_range(ctx: DistContext, n: int) -> Tensor:
    """This rank's contiguous share of ``range(n)`` (for the selection pass)."""
    return torch.tensor_split(torch.arange(n), ctx.world)[ctx.rank]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside ``torch.compile`` and DistributedDataParallel wrappers.

    Attacks, selection features and checkpoints work on the plain network: an attack run through
    DDP's forward would arm its gradient-reduction hooks for a backward that never comes.
    """
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, DistributedDataParallel):
        inner = inner.module
    return getattr(inner, "_orig_mod", inner)
