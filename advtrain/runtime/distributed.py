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


def global_weighted_loss(ctx: DistContext, losses: Tensor, weights: Tensor | None, correct: Tensor, count: int,
                         stop: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The local loss to back-propagate, plus the global batch's loss value, correct count, size and stop flag.

    Each rank holds a slice of the global batch. Scaling the local Σγℓ by world/Σ_global γ makes
    DDP's gradient average equal the gradient of Σγℓ/Σγ over the whole global batch. One
    all-reduce carries the weight sum, the statistics and this rank's ``stop`` request (any rank's
    request reaches all). All device tensors: nothing is read back.
    """
    w = torch.ones_like(losses) if weights is None else weights.to(losses.dtype)
    local = (w * losses).sum()
    flags = torch.tensor([float(count), float(stop)]).to(losses.device, non_blocking=True)
    stats = torch.cat([torch.stack([w.sum().detach(), local.detach(), correct.float()]), flags])
    all_reduce_sum(ctx, stats)
    loss = local * ctx.world / stats[0]
    return loss, stats[1] / stats[0], stats[2], stats[3], stats[4]


def any_rank(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce when distributed)."""
    if not ctx.enabled:
        return flag
    return bool(all_reduce_sum(ctx, torch.tensor([float(flag)], device=device))[0] > 0)


def rank0_flag(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks take a decision only rank 0 can make)."""
    if not ctx.enabled:
        return flag
    out = broadcast_tensor(ctx, torch.tensor([float(flag)], device=device), dtype=torch.float32, device=device)
    return bool(out[0] > 0)


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


def attack_view(model: torch.nn.Module) -> torch.nn.Module:
    """The model an attack runs on: the plain network when data parallel, ``model`` itself otherwise.

    Attack steps differentiate w.r.t. the input only; running them through DDP's forward would
    arm its gradient-reduction hooks for a backward that never comes. A single-process compiled
    model stays compiled: the attack's passes are most of a training step.
    """
    from torch.nn.parallel import DistributedDataParallel

    return unwrap(model) if isinstance(getattr(model, "_orig_mod", model), DistributedDataParallel) else model
