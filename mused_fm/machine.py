"""Facts about the machine and the checkout a run or a benchmark ran on (no DeepSpeed import).

Read by the trainer's run_info.json and by the benchmarks' records.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = [
    "cpu_model",
    "cpu_usable",
    "device_info",
    "git_commit",
    "package_version",
    "physical_cores",
    "ram_bytes",
    "x86_features",
]


def _cpuinfo() -> list[tuple[str, str]]:
    """(key, value) pairs of /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines) if v]


def cpu_model() -> str | None:
    return next((v for k, v in _cpuinfo() if k == "model name"), None)


def physical_cores() -> int | None:
    """Distinct (socket, core) pairs: os.cpu_count() counts SMT threads, which share a core's FPUs."""
    cores, socket = set(), "0"
    for key, value in _cpuinfo():
        if key == "physical id":
            socket = value
        elif key == "core id":
            cores.add((socket, value))
    return len(cores) or None


def x86_features() -> dict[str, bool] | None:
    """The vector extensions that set a CPU's matmul peak (x86 only; None elsewhere)."""
    flags = next((v.split() for k, v in _cpuinfo() if k == "flags"), None)
    if flags is None:
        return None
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "amx_tile": "amx_tile" in flags}


def cpu_usable() -> int | None:
    """CPUs this process may run on: fewer than os.cpu_count() under a cpuset (containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # sched_getaffinity is Linux-only
        return None


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the name is unknown
        return None


def git_commit() -> str | None:
    """Commit of this checkout, with -dirty when it has uncommitted changes; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_version(name: str) -> str | None:
    # Read from the installed metadata: deepspeed is imported by mused_fm/train/engine.py only.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    elif (model := cpu_model()) is not None:
        info["cpu_model"] = model
    return info
