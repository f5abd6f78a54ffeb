"""Global subject ids: '<dataset>/<name>' (nsd/subj01, hcp/100610), the one place they are split or joined."""

from __future__ import annotations

from mused_fm.errors import InputError

__all__ = ["dataset_of", "global_id", "name_of", "split_id"]


def split_id(subject_id: str) -> tuple[str, str]:
    """('nsd', 'subj01') from 'nsd/subj01'; a ValueError naming the id when it has no dataset part."""
    dataset, sep, name = subject_id.partition("/")
    if not sep or not dataset or not name:
        raise InputError(f"subject id {subject_id!r} is not of the form <dataset>/<name> (e.g. nsd/subj01).")
    return dataset, name


def dataset_of(subject_id: str) -> str:
    return split_id(subject_id)[0]


def name_of(subject_id: str) -> str:
    return split_id(subject_id)[1]


def global_id(dataset: str, name: str) -> str:
    return f"{dataset}/{name}"
