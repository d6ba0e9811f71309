"""Data-parallel statistics: several processes, each on its own shard of the corpus.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``): :func:`init_from_env` joins the process group (NCCL where the device is a GPU, gloo on
CPUs). The collection loop then takes every ``world``-th window of documents, accumulates its own
partial sums, exchanges only a few scalars at check points (progress, convergence, whether anyone has
work left) and all-reduces the sums once at the end, in float64 so the result does not depend on the
order of the ranks beyond rounding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["DistContext", "init_from_env", "current", "env_world_size"]


@dataclass(frozen=True)
class DistContext:
    """Who this process is. ``device``: where collectives run (CUDA for NCCL, CPU for gloo)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives (no-ops alone)
    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self.active:
            return t
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        if t.device == self.device:
            dist.all_reduce(t, op=ops[op])
            return t
        moved = t.to(self.device)
        dist.all_reduce(moved, op=ops[op])
        t.copy_(moved)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> DistContext:
    """The process group this process already belongs to, or a single-process context."""
    try:
        import torch.distributed as dist
    except ImportError:  # torch built without distributed support
        return DistContext()
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = dist.get_backend()
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def init_from_env(device: str | torch.device | None = None) -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), once.

    ``device``: the device this rank computes on; a CUDA device (default ``cuda:LOCAL_RANK`` where
    CUDA exists) picks NCCL and becomes the current device, anything else gloo. Returns the context;
    with ``WORLD_SIZE`` unset or 1 nothing is initialised.
    """
    if env_world_size() <= 1:
        return DistContext()
    import torch.distributed as dist

    if dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    ctx = current()
    log.info("rank %d of %d (%s, %s)", ctx.rank, ctx.world, backend, device)
    return ctx
