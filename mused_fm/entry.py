"""How every entry point ends: named errors as one line, bugs with their traceback, and no rank left behind.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        init_logging()
        return run_entry(lambda: _run(args))

A `MusedError` (bad input a user can fix) prints `error: <message>` and exits 2. Any other exception is a
bug: it keeps its traceback (exit 1). In a job of several ranks the failing process then leaves at once
with os._exit, its output flushed, and its launcher (deepspeed, torchrun) sees the non-zero exit and
stops the other ranks, which may be waiting for it in a collective. Why not a normal exit, or a
destroyed process group:
- a normal exit first tears the interpreter down: joins DataLoader workers, runs atexit hooks and the
  process group's destructor; with NCCL that destructor may wait for a collective the other ranks
  never complete, so the failing process, and with it the job, would not end;
- `torch.distributed.destroy_process_group()` blocks while a collective of this rank is still in flight
  (measured with gloo: an async all_reduce the peer never joins kept it waiting until the job was killed).
os._exit skips all of that; the kernel closes the sockets, so gloo peers fail at once ("Connection
closed/reset by peer") and NCCL peers are stopped by the launcher.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from mused_fm.errors import MusedError

__all__ = ["add_export_arguments", "run_entry"]


def add_export_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The arguments of an entry point that runs an export over shard sets (evaluate, predict): --checkpoint,
    --shards, --split, --subjects, --batch-size, and the --local_rank some launchers pass."""
    parser.add_argument("--checkpoint", required=True, help="export directory, or a run directory")
    parser.add_argument("--shards", action="append", required=True, help="shard folder or s3:// prefix (repeatable)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--subjects", default="", help=f"global ids to {verb}, comma-separated (default: all known)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _world_size() -> int:
    """The job's size as every launcher states it (deepspeed, torchrun, MPI discovery, init_distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _leave(code: int) -> None:
    """End this process now, output flushed (multi-rank jobs only; see the module docstring)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_entry(body: Callable[[], int]) -> int:
    """Run a launcher's body and return its exit code: 2 for a named error; see the module docstring."""
    try:
        return body()
    except MusedError as err:
        print(f"error: {err}", file=sys.stderr)
        if _world_size() > 1:
            _leave(2)
        return 2
    except Exception:
        if _world_size() <= 1:
            raise
        # As if uncaught: torch.distributed's hook prefixes every line with [rankN].
        sys.excepthook(*sys.exc_info())
        _leave(1)
        raise  # not reached: _leave ends the process
