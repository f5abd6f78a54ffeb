"""Helpers shared by the benchmarks: interleaved timing and the record of where and when a benchmark ran
(`environment`), which docs/BENCHMARKS.md prints. Device facts and FLOP counting live in mused_fm.machine
and mused_fm.flops, which the trainer uses too."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from mused_fm import machine
from mused_fm.flops import sync

__all__ = ["environment", "time_interleaved"]


def environment(command: str) -> dict:
    """Where and when a benchmark ran: stored in its JSON under "environment", printed by the doc.

    Args:
        command: the command line that ran the benchmark, as a user would retype it.
    """
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "commit": machine.git_commit(),
        "cpu_model": machine.cpu_model() or platform.processor() or platform.machine(),
        "cpu_cores": machine.physical_cores(),
        "cpu_threads": os.cpu_count(),
        "cpu_usable": machine.cpu_usable(),
        "cpu_features": machine.x86_features(),
        "ram_bytes": machine.ram_bytes(),
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "torch": torch.__version__,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else None,
        "deepspeed": machine.package_version("deepspeed"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each step, timed in alternation so machine noise hits all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
