"""The project's named errors: input a user can fix (a recipe, shards, a checkpoint, a subject id).

Every one is a `ValueError`, so callers that caught ValueError keep working. Entry points print these
as one line (`error: ...`) and exit 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DivergedError",
    "InputError",
    "MissingFileError",
    "MusedError",
    "RecipeError",
    "ShardSchemaError",
    "UnknownSubjectError",
]


class MusedError(ValueError):
    """Base of the named errors: the message says what is wrong, what was expected and the fix."""


class RecipeError(MusedError):
    """A recipe key is unknown, has the wrong type, or its value is invalid."""


class ShardSchemaError(MusedError):
    """A shard, record or manifest does not follow the shard schema (or does not fit the model)."""


class UnknownSubjectError(MusedError):
    """A global subject id is not in a model's registry or a shard set's manifest."""


class ClipTargetError(MusedError):
    """The CLIP features a run asked for cannot be found (a stimulus missing from the shuffled-CLIP cache)."""


class CheckpointError(MusedError):
    """An export or run directory cannot be read as one (missing files, wrong layout)."""


class DivergedError(MusedError):
    """Training stopped: the loss stayed NaN or infinite (faulty data, or a learning rate too high)."""


class InputError(MusedError):
    """Other bad input: a missing file, arguments that contradict each other, an empty selection."""


class MissingFileError(MusedError, FileNotFoundError):
    """A file or directory the input names does not exist (also a FileNotFoundError, for callers that catch OSError)."""
