"""Readers of a BIDS dataset as BIDS defines it: bold runs, inherited sidecars, events, and the labels table.

sub-<label>/[ses-<label>/]func/sub-<label>[_ses-<label>]_task-<label>[_run-<n>]_bold.nii[.gz]
..._events.tsv           onset, duration (seconds), stim_file (a path under stimuli/, as the specification
                         says; many datasets write it from the root, stimuli/img01.png: both are read)
..._bold.json            RepetitionTime; by the inheritance principle it may also sit higher up
                         (e.g. task-<label>_bold.json at the root), the nearest file winning per key
stimuli/<stim_file>      the images shown
LABELS.tsv (ours)        stim_file, labels ('a;b;c'), optional caption
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from mused_fm.errors import InputError, MissingFileError

__all__ = ["BoldRun", "find_runs", "read_events", "read_labels", "repetition_time", "stimulus_name"]

logger = logging.getLogger(__name__)

_ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")


def _entities(name: str) -> dict[str, str]:
    return dict(_ENTITY.findall(name.split(".")[0]))


@dataclass
class BoldRun:
    subject: str
    """'sub-01'"""
    path: Path
    events: Path

    @property
    def unit(self) -> str:
        """'ses-1_task-images_run-1': the run's entities after the subject, for sample keys."""
        ent = _entities(self.path.name)
        return "_".join(f"{k}-{v}" for k, v in ent.items() if k != "sub") or "run"


def find_runs(root: Path, subjects: list[str] | None) -> dict[str, list[BoldRun]]:
    """{'sub-01': [BoldRun, ...]} for every bold run with an events file, in name order."""
    found = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    if not found:
        raise MissingFileError(f"{root} holds no sub-* folders: --root must be the BIDS dataset root.")
    wanted = subjects or found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise MissingFileError(f"{root} has no {missing}; it has {', '.join(found)}.")
    runs: dict[str, list[BoldRun]] = {}
    for subject in wanted:
        bolds = sorted((root / subject).glob("**/func/*_bold.nii*"))
        if not bolds:
            raise MissingFileError(f"{root / subject} holds no func/*_bold.nii[.gz] files.")
        stems: dict[str, Path] = {}
        for bold in bolds:  # one run written twice (run.nii and run.nii.gz) would be packed twice
            stem = re.sub(r"\.nii(\.gz)?$", "", bold.name)
            if stem in stems:
                raise InputError(f"{stems[stem]} and {bold} are the same run in two formats; keep one of them.")
            stems[stem] = bold
        for bold in bolds:
            events = bold.with_name(re.sub(r"_bold\.nii(\.gz)?$", "_events.tsv", bold.name))
            if not events.exists():
                raise MissingFileError(f"{events} is missing: every bold run needs its _events.tsv.")
            runs.setdefault(subject, []).append(BoldRun(subject, bold, events))
    return runs


def repetition_time(root: Path, bold: Path) -> float:
    """RepetitionTime from the sidecars that apply to `bold`, nearest last (BIDS inheritance principle)."""
    ent = _entities(bold.name)
    merged: dict = {}
    folders = [bold.parent, *bold.parent.parents]
    for folder in reversed([f for f in folders if f == root or root in f.parents]):
        for sidecar in sorted(folder.glob("*_bold.json")):
            if all(ent.get(k) == v for k, v in _entities(sidecar.name).items()):
                merged.update(json.loads(sidecar.read_text()))
    if "RepetitionTime" not in merged:
        raise InputError(
            f"no RepetitionTime for {bold}: add it to {bold.name.split('.')[0]}.json or an inherited "
            f"task-{ent.get('task', '<label>')}_bold.json at the dataset root."
        )
    return float(merged["RepetitionTime"])


def stimulus_name(root: Path, stim_file: str) -> str:
    """stim_file as a path under stimuli/: the specification's form, or the root-relative 'stimuli/x.png'."""
    name = stim_file.strip().removeprefix("./")
    if name.startswith("stimuli/") and not (root / "stimuli" / name).exists():
        return name.removeprefix("stimuli/")
    return name


def read_events(path: Path, root: Path) -> list[dict[str, str]]:
    """The events of one run with a numeric onset, stim_file resolved under stimuli/ (`stimulus_name`).

    An onset of `n/a` (allowed by BIDS) cannot be placed in time: that event is skipped and counted in
    the log; any other non-number is an error naming the file and row.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    needed = {"onset", "duration", "stim_file"}
    if rows and not needed <= set(rows[0]):
        raise InputError(f"{path}: columns {sorted(needed - set(rows[0]))} are missing (has {list(rows[0])}).")
    events, unplaced = [], 0
    for row_number, row in enumerate(rows, start=2):  # row 1 is the header
        if row["onset"].strip() == "n/a":
            unplaced += 1
            continue
        try:
            onset = float(row["onset"])
        except ValueError:
            raise InputError(f"{path}, row {row_number}: onset {row['onset']!r} is not a number (or n/a).") from None
        if not math.isfinite(onset):
            raise InputError(f"{path}, row {row_number}: onset {row['onset']!r} is not a finite number.")
        events.append({**row, "stim_file": stimulus_name(root, row["stim_file"] or "")})
    if unplaced:
        logger.warning("%s: %d events with onset n/a skipped (they cannot be placed in time)", path, unplaced)
    return events


def read_labels(path: Path, root: Path) -> dict[str, tuple[list[str], str]]:
    """{stimulus under stimuli/: (class names, caption)} from LABELS.tsv (stim_file in either form)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"stim_file", "labels"} <= set(rows[0]):
        raise InputError(f"{path}: expected a tab-separated header with stim_file, labels and optionally caption.")
    return {
        stimulus_name(root, r["stim_file"]): (
            [x.strip() for x in r["labels"].split(";") if x.strip()],
            (r.get("caption") or "").strip(),
        )
        for r in rows
    }
