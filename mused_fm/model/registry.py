"""Subject registry: global subject ids ('nsd/subj01', 'hcp/100610') <-> rows of the token table.

The registry travels with every checkpoint and export (registry.json), so a model always knows
which row belongs to whom. Names are mapped to rows on the CPU side: an unknown name is a
ValueError that names it, instead of an opaque out-of-range index inside a kernel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch

from mused_fm.errors import CheckpointError, UnknownSubjectError
from mused_fm.files import write_json
from mused_fm.subject_ids import dataset_of, split_id

__all__ = ["SubjectRegistry", "UnknownSubjectError"]


class SubjectRegistry:
    """Ordered, duplicate-free list of global subject ids of the form '<dataset>/<name>'."""

    def __init__(self, subject_ids: Iterable[str]) -> None:
        self.ids: list[str] = list(subject_ids)
        bad = [s for s in self.ids if not _well_formed(s)]
        if bad:
            raise UnknownSubjectError(f"subject ids must look like '<dataset>/<name>' (e.g. 'nsd/subj01'), got {bad}.")
        dupes = sorted({s for s in self.ids if self.ids.count(s) > 1})
        if dupes:
            raise UnknownSubjectError(f"subject ids must be unique; listed more than once: {dupes}.")
        self._row = {s: i for i, s in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._row

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubjectRegistry) and self.ids == other.ids

    def __repr__(self) -> str:
        return f"SubjectRegistry({self.ids})"

    @property
    def row_of(self) -> Mapping[str, int]:
        """Read-only map of global subject id -> row of the token table (what the data pipeline reads)."""
        return MappingProxyType(self._row)

    def datasets(self) -> list[str]:
        """Dataset names in order of first appearance."""
        return list(dict.fromkeys(dataset_of(s) for s in self.ids))

    def rows(self, subject_ids: Sequence[str], where: str = "") -> torch.Tensor:
        """Rows of the token table for `subject_ids`, as a CPU int64 tensor of shape (B,).

        Args:
            where: what the ids came from (a shard name), quoted in the error.
        """
        try:
            return torch.tensor([self._row[s] for s in subject_ids], dtype=torch.long)
        except KeyError as err:
            origin = f" (in {where})" if where else ""
            raise UnknownSubjectError(
                f"subject {err.args[0]!r}{origin} is not in the model's registry of {len(self)} subjects "
                f"({', '.join(self.ids[:8])}{', ...' if len(self) > 8 else ''}). Train with that subject, "
                "or add it with launch/adapt_subject.py."
            ) from None

    def extended(self, new_ids: Sequence[str]) -> SubjectRegistry:
        """A registry with `new_ids` appended after the known ones (rows of old subjects unchanged)."""
        return SubjectRegistry([*self.ids, *new_ids])

    def save(self, path: str | Path) -> None:
        write_json(path, {"subjects": self.ids})

    @classmethod
    def load(cls, path: str | Path) -> SubjectRegistry:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("subjects"), list):
            raise CheckpointError(f"{path}: expected {{'subjects': [ids...]}}, got {str(data)[:80]!r}.")
        return cls(data["subjects"])


def _well_formed(subject_id: str) -> bool:
    try:
        split_id(subject_id)
    except ValueError:
        return False
    return True
