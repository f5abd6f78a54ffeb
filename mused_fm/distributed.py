"""Rank facts and collectives beyond DeepSpeed's gradient reduction (torch.distributed only, no DeepSpeed).

Used by the trainer, adaptation and evaluation alike. Every function is a no-op (or the identity) in a
world of one, so tests and single-process runs take the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "broadcast_value",
    "gather_with_grad",
    "mean_over_ranks",
    "sum_over_ranks",
    "world_size",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, and the device it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> DistInfo:
        """A world of one process (evaluation of an export, tests)."""
        return cls(rank=0, local_rank=0, world_size=1, device=torch.device(device))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _comm_device() -> torch.device:
    """Where small bookkeeping tensors must live for the process group: NCCL has no CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_value(value: float) -> float:
    """Rank 0's number on every rank (decisions such as early stopping must be identical everywhere)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, 0)
    return t.item()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends each rank the summed gradient of its own slice.

    Every rank computes the same loss on the gathered batch; DeepSpeed then averages parameter
    gradients over ranks. Summing the upstream gradients here (instead of keeping only the local
    copy) makes that average equal the gradient of one process holding the whole batch. The backward
    is an all_reduce, which gloo (CPU) and NCCL both have, unlike reduce_scatter.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.batch : (rank + 1) * ctx.batch]


def gather_with_grad(x_BF: torch.Tensor) -> torch.Tensor:
    """(world * B, F): every rank's x in rank order; gradients flow back to each rank's own rows.

    Every rank must pass the same B (the trainer's per-dataset batch split is identical on all ranks).
    """
    if world_size() == 1:
        return x_BF
    if x_BF.requires_grad:
        return _GatherWithGrad.apply(x_BF)
    parts = [torch.empty_like(x_BF) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x_BF.contiguous())
    return torch.cat(parts)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Element-wise sum of a dict of numbers over ranks (same keys, same order on every rank)."""
    if world_size() == 1 or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return dict(zip(values, t.tolist(), strict=True))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    n = world_size()
    return {k: v / n for k, v in sum_over_ranks(values).items()}


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable; produced by this run's own ranks, never read from shards)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
