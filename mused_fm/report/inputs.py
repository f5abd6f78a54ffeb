"""Find and read what a report is built from: a run directory, or a `make demo` directory around one.

DIR/run/ (or DIR itself)   config.yaml, metrics.jsonl, run_info.json, export/   (required)
DIR/eval.json              test metrics of the run (computed by the report when absent)
DIR/adapt/curve.json       the new-subject sweep (optional)
DIR/compare/               the comparison of launch/compare.py (optional; mused_fm.report.comparison reads it)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mused_fm.errors import MissingFileError

__all__ = ["ReportInputs", "find_inputs", "read_metrics"]


@dataclass
class ReportInputs:
    root: Path
    run: Path
    eval: dict | None
    adapts: dict[Path, list[dict]]
    """New-subject sweep directory -> its curve.json points."""
    cohort: dict | None = None
    """A `make demo` directory's raw/synth_summary.json: the simulated cohort, with its CLIP's alignment."""


def read_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a run's metrics.jsonl; torn lines are skipped."""
    train, val = [], []
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: is {run} a run directory (run.out_dir of a training run)?")
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "val":
            val.append(record)
        elif "loss" in record:
            train.append(record)
    return train, val


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def find_inputs(root: str | Path) -> ReportInputs:
    """Resolve a demo directory (with run/) or a run directory; a clear error when it is neither."""
    root = Path(root)
    run = root / "run" if (root / "run" / "config.yaml").is_file() else root
    if not (run / "config.yaml").is_file():
        raise MissingFileError(
            f"{root} is neither a run directory (config.yaml, metrics.jsonl, export/) nor a `make demo` directory "
            "(run/ inside); pass the run.out_dir of a training run."
        )
    if not (run / "export").is_dir():
        raise MissingFileError(f"{run}/export does not exist: the run has not finished (rerun its training command).")
    eval_json = _json(root / "eval.json") or _json(run / "eval.json")
    adapts = {p.parent: json.loads(p.read_text()) for p in sorted(root.glob("adapt*/curve.json"))}
    return ReportInputs(root, run, eval_json, adapts, _json(root / "raw" / "synth_summary.json"))
