"""Find and read what a report is built from: a run directory, or a `make demo` directory around one.

DIR/run/ (or DIR itself)   config.yaml, metrics.jsonl, run_info.json, export/   (required)
DIR/eval.json              test metrics of the run (computed by the report when absent)
DIR/adapt/curve.json       the new-subject sweep (optional)
DIR/compare/<variant>/     comparison and ablation runs, each with eval.json (optional);
                           SS-ViT is one run per subject under compare/ss_vit/<dataset>_<subject>/
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mused_fm.errors import MissingFileError

__all__ = ["ABLATIONS", "BASELINES", "ReportInputs", "find_inputs", "read_metrics"]

# Variant directory under compare/ -> the paper's name (comparison) or what it leaves out (ablation).
BASELINES = {"ss_vit": "SS-ViT", "ms_smodel": "MS-SMODEL", "ms_emb": "MS-EMB"}
ABLATIONS = {
    "no_llv": "without RSA llv",
    "no_hlv": "without RSA hlv",
    "no_orth": "without orthogonality",
    "bce_only": "BCE only",
}


@dataclass
class ReportInputs:
    root: Path
    run: Path
    eval: dict | None
    adapts: dict[Path, list[dict]]
    """New-subject sweep directory -> its curve.json points."""
    variants: dict[str, dict] = field(default_factory=dict)
    """Variant directory name -> {"subjects": {id: metrics}}, merged over per-subject runs (SS-ViT)."""
    missing_variants: list[str] = field(default_factory=list)
    """Variant runs without eval.json (not finished, or not evaluated), named in the report."""


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


def _variants(compare: Path) -> tuple[dict[str, dict], list[str]]:
    variants: dict[str, dict] = {}
    missing: list[str] = []
    if not compare.is_dir():
        return variants, missing
    for sub in sorted(p for p in compare.iterdir() if p.is_dir()):
        evals = [sub / "eval.json"] if (sub / "config.yaml").is_file() else sorted(sub.glob("*/eval.json"))
        runs = [sub] if (sub / "config.yaml").is_file() else sorted(p for p in sub.iterdir() if p.is_dir())
        found = [e for e in evals if e.is_file()]
        missing.extend(str(r) for r in runs if not (r / "eval.json").is_file())
        if found:
            subjects = {k: v for e in found for k, v in json.loads(e.read_text())["subjects"].items()}
            variants[sub.name] = {"subjects": subjects}
    return variants, missing


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
    variants, missing = _variants(root / "compare")
    return ReportInputs(root, run, eval_json, adapts, variants, missing)
