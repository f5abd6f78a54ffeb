"""Run by tests/test_rendezvous.py as one rank: join the group, then print this process's listening sockets.

Each line: the local address of a TCP socket in LISTEN state that this process owns (from /proc).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import torch
import torch.distributed as dist

from mused_fm.train.engine import init_distributed


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, struct.pack('<I', int(host, 16)))}:{int(port, 16)}"
    words = struct.unpack("<IIII", raw)  # /proc writes IPv6 as four little-endian words
    return f"[{socket.inet_ntop(socket.AF_INET6, struct.pack('>IIII', *words))}]:{int(port, 16)}"


def listening() -> list[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.islink(f"/proc/self/fd/{fd}") else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_address(fields[1]))
    return found


if __name__ == "__main__":
    init_distributed()
    ones = torch.ones(1)
    dist.all_reduce(ones)  # the group works
    sockets = listening()
    dist.barrier()
    print(f"world {int(ones.item())} listening {' '.join(sockets) or '-'}")
