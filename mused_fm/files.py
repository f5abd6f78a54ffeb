"""Atomic local writes and the one strict JSON writer: a reader never sees half a file.

`atomic_path` yields a temporary sibling (same suffix, so writers that pick a format by name, such as
nibabel, still work) and renames it over the target only when the block finishes; on an error the
temporary file is removed and the target is left as it was. Remote (s3://) writes go through
mused_fm.data.storage, which uses these for local paths.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "dumps_json", "json_safe", "write_bytes", "write_json", "write_text"]

TEMPORARY_PREFIX = ".tmp-"  # a file named so is an unfinished write (left by a killed process): never read


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed over `path` on success, deleted on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def json_safe(value: Any) -> Any:
    """NaN and infinities (a metric undefined for a subject, e.g. AUC without negatives) -> None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def dumps_json(payload: Any, indent: int | None = 1) -> str:
    """Strict JSON text (NaN written as null), newline-terminated."""
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Strict JSON, written atomically to a local file (s3:// URLs: mused_fm.data.storage.write_json)."""
    write_text(path, dumps_json(payload))
