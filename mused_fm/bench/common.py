"""Helpers shared by the benchmarks: device, matmul peak, FLOP counts, interleaved timing, and the
record of where and when a benchmark ran (`environment`), which docs/BENCHMARKS.md prints."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mused_fm.data import storage

__all__ = ["count_flops", "device_info", "environment", "matmul_peak_flops", "time_interleaved", "write_json"]


def _cpuinfo() -> list[tuple[str, str]]:
    """(key, value) pairs of /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines) if v]


def _cpu_model() -> str | None:
    return next((v for k, v in _cpuinfo() if k == "model name"), None)


def _physical_cores() -> int | None:
    """Distinct (socket, core) pairs: os.cpu_count() counts SMT threads, which share a core's FPUs."""
    cores, socket = set(), "0"
    for key, value in _cpuinfo():
        if key == "physical id":
            socket = value
        elif key == "core id":
            cores.add((socket, value))
    return len(cores) or None


def _x86_features() -> dict[str, bool] | None:
    """The vector extensions that set a CPU's matmul peak (x86 only; None elsewhere)."""
    flags = next((v.split() for k, v in _cpuinfo() if k == "flags"), None)
    if flags is None:
        return None
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "amx_tile": "amx_tile" in flags}


def _usable_cpus() -> int | None:
    """CPUs this process may run on: fewer than os.cpu_count() under a cpuset (containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # sched_getaffinity is Linux-only
        return None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the name is unknown
        return None


def _git_describe() -> str | None:
    """Commit of this checkout, with -dirty when it has uncommitted changes; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _package_version(name: str) -> str | None:
    # Read from the installed metadata: importing deepspeed here would break habit 9 (one module imports it).
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
        "commit": _git_describe(),
        "cpu_model": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_cores": _physical_cores(),
        "cpu_threads": os.cpu_count(),
        "cpu_usable": _usable_cpus(),
        "cpu_features": _x86_features(),
        "ram_bytes": _ram_bytes(),
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "torch": torch.__version__,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else None,
        "deepspeed": _package_version("deepspeed"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def device_info(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    elif (cpu_model := _cpu_model()) is not None:
        info["cpu_model"] = cpu_model
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best measured FLOP/s of a size^3 matmul: the rate the hardware and BLAS actually deliver."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` (matmuls, convolutions and attention, as torch counts them)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each step, timed in alternation so machine noise hits all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def write_json(path: str | os.PathLike, payload: dict) -> None:
    storage.write_bytes(str(path), (json.dumps(payload, indent=1) + "\n").encode())
