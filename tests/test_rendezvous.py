"""A single-node job listens on loopback only: the rendezvous store and gloo's sockets (issue: torch's default
store listens on every interface of rank 0's host)."""

from __future__ import annotations

import subprocess
import sys

from train_helpers import ROOT, child_env, free_port

WORKER = ROOT / "tests" / "listening_worker.py"


def _ranks(world: int) -> list[str]:
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = child_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        env.pop("GLOO_SOCKET_IFNAME", None)
        procs.append(
            subprocess.Popen([sys.executable, str(WORKER)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        )
    return [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]


def test_two_local_ranks_listen_on_loopback_only():
    """The environment the deepspeed launcher gives two ranks on one host."""
    lines = _ranks(2)
    assert all(line.startswith("world 2 listening ") for line in lines), lines
    addresses = [a for line in lines for a in line.removeprefix("world 2 listening ").split()]
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses


def test_one_process_listens_on_loopback_only():
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "MASTER_PORT", "GLOO_SOCKET_IFNAME")}
    proc = subprocess.run(
        [sys.executable, str(WORKER)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("world 1 listening "), proc.stdout + proc.stderr[-2000:]
    assert all(a.startswith("127.0.0.1:") for a in last.removeprefix("world 1 listening ").split())
