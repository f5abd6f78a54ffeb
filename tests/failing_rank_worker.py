"""Run by tests/test_launch_errors.py under the deepspeed launcher: rank 1 fails while rank 0 waits.

Rank 0 holds a DataLoader with a persistent worker (as training does) and waits in an all_reduce loop;
rank 1 fails through mused_fm.entry.run_entry with the error kind named on the command line. Rank 1 also
holds a thread that never ends: it stands for interpreter teardown that blocks (an NCCL destructor waiting
for a collective, a worker join), so only a process that leaves at once lets the launcher end the job.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.distributed as dist

from mused_fm.entry import run_entry
from mused_fm.errors import InputError
from mused_fm.log import init_logging
from mused_fm.train.engine import init_distributed


class Zeros(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(2)


def body(kind: str) -> int:
    rank = init_distributed().rank
    loader = torch.utils.data.DataLoader(
        Zeros(), batch_size=None, num_workers=1, multiprocessing_context="spawn", persistent_workers=True
    )
    batches = iter(loader)
    next(batches)
    if rank == 1:
        threading.Thread(target=threading.Event().wait, daemon=False).start()  # a normal exit waits for it
        raise InputError("rank 1 cannot go on") if kind == "named" else RuntimeError("rank 1 has a bug")
    ones = torch.ones(1)
    for _ in range(10**6):  # until the launcher stops this rank
        dist.all_reduce(ones)
    return 0


if __name__ == "__main__":
    init_logging()
    sys.exit(run_entry(lambda: body(sys.argv[-1])))  # the launcher puts --local_rank=N first
