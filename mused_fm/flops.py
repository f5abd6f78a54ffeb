"""FLOP counting and the measured matmul peak, for the trainer's MFU figure and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "matmul_peak_flops", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best measured FLOP/s of a size^3 matmul: the rate the hardware and BLAS actually deliver."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` (matmuls, convolutions and attention, as torch counts them)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()
