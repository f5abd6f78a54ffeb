"""Which checkpoint a run resumes from: only complete, intact ones, newest first, and why others were skipped.

DeepSpeed writes `checkpoints/step{N}/` (one file per rank) and then `checkpoints/latest`. A run can be
killed at any point of that, and files can be damaged later. So after every save, once all ranks have
written (a barrier), rank 0 records `step{N}/complete.json`: the step and the sha256 of every file of the
directory. On resume rank 0 takes the newest step directory whose record exists and whose files all
still match it; `latest` is not trusted (it may name a step that was never finished, or be empty).

The record is a check against damage (a torn copy, a truncated upload, a disk error), not against an
attacker who can write the run directory: such a one can rewrite the record too. What keeps a planted
checkpoint from running code is that every file is loaded with torch.load(weights_only=True) (engine.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from mused_fm.files import write_json

__all__ = ["COMPLETE", "newest_complete", "record_complete"]

logger = logging.getLogger(__name__)
COMPLETE = "complete.json"
_STEP_DIR = re.compile(r"^step(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(step_dir)): p for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != COMPLETE}


def record_complete(directory: Path, step: int) -> None:
    """Rank 0, after every rank has saved step `step`: mark step{step}/ complete with its files' hashes."""
    step_dir = Path(directory) / f"step{step}"
    files = {name: _sha256(path) for name, path in _files(step_dir).items()}
    write_json(step_dir / COMPLETE, {"step": step, "files": files})


def _problem(step_dir: Path, step: int) -> str | None:
    """Why step_dir cannot be resumed from, or None when it is complete and intact."""
    marker = step_dir / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} (the save did not finish)"
    try:
        record = json.loads(marker.read_text())
        recorded = dict(record["files"])
    except (ValueError, KeyError, TypeError) as err:
        return f"{COMPLETE} is unreadable ({err})"
    if record.get("step") != step:
        return f"{COMPLETE} is for step {record.get('step')}"
    present = _files(step_dir)
    missing = sorted(set(recorded) - set(present))
    if missing:
        return f"files missing: {', '.join(missing)}"
    changed = [name for name, digest in recorded.items() if _sha256(present[name]) != digest]
    if changed:
        return f"files changed or damaged since the save: {', '.join(changed)}"
    return None


def newest_complete(directory: Path) -> int | None:
    """The newest step with a complete, intact checkpoint under `directory` (None: none), logging every skip."""
    steps = []
    for path in Path(directory).glob("step*"):
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            steps.append(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        problem = _problem(Path(directory) / f"step{step}", step)
        if problem is None:
            return step
        logger.warning("not resuming from %s/step%d: %s", directory, step, problem)
    return None
