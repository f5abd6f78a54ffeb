"""How every entry point ends: named errors as one line, bugs with their traceback, and no rank left behind.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        init_logging()
        return run_entry(lambda: _run(args))

A `MusedError` (bad input a user can fix) prints `error: <message>` and exits 2. Any other exception is a
bug: it keeps its traceback (exit 1). In a job of several ranks the failing process then leaves at once
with os._exit, after flushing its output: a normal interpreter exit first joins DataLoader workers, S3 and
logging threads, which can take long or block, while the other ranks wait in a collective. Its launcher
(deepspeed, torchrun) sees the non-zero exit and stops the other ranks, so the job ends instead of hanging.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from mused_fm.errors import MusedError

__all__ = ["run_entry"]


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _leave(code: int) -> None:
    """End this process now, output flushed (multi-rank jobs only)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_entry(body: Callable[[], int]) -> int:
    """Run a launcher's body and return its exit code; see the module docstring for failures."""
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
        traceback.print_exc()
        _leave(1)
        raise  # not reached: _leave ends the process
