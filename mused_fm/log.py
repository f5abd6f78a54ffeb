"""One logging set-up for every entry point: rank 0 talks at INFO, the other ranks only warn."""

from __future__ import annotations

import logging
import os

__all__ = ["init_logging"]

FORMAT = "%(asctime)s | rank {rank} | %(levelname)s | %(name)s | %(message)s"


def init_logging(rank: int | None = None) -> None:
    """Configure the root logger once per process; `rank` defaults to $RANK (0 outside a launcher)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=FORMAT.format(rank=rank))
