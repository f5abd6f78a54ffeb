"""The subject-token Transformer of CLIP-MUSED, for any number of datasets and subjects."""

from mused_fm.model.freeze import assert_unchanged, freeze_for_new_subjects, snapshot
from mused_fm.model.mused import MusedModel, MusedOutput, build_model, export_dir, load_export
from mused_fm.model.registry import SubjectRegistry, UnknownSubjectError

__all__ = [
    "MusedModel",
    "MusedOutput",
    "SubjectRegistry",
    "UnknownSubjectError",
    "assert_unchanged",
    "build_model",
    "export_dir",
    "freeze_for_new_subjects",
    "load_export",
    "snapshot",
]
