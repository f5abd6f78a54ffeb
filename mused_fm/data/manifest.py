"""Read a shard set's manifest.json and answer what its samples must look like."""

from __future__ import annotations

import json

from mused_fm.data import storage
from mused_fm.data.schema import SCHEMA_VERSION, ShardSchemaError, member_shapes

__all__ = ["MANIFEST", "expected_shapes", "read_manifest", "shard_url"]

MANIFEST = "manifest.json"


def read_manifest(url: str) -> dict:
    """The manifest of the shard set at `url` (folder or s3:// prefix), with a named error if absent."""
    path = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as err:
        raise ShardSchemaError(f"{path} is not valid JSON ({err}); rerun the pack command to rewrite it.") from None
    except FileNotFoundError:
        raise ShardSchemaError(
            f"{path} does not exist: {url} is not a finished shard set (the manifest is written last, so a pack "
            "that stopped early has none). Rerun the pack command to finish it."
        ) from None
    if manifest.get("schema") != SCHEMA_VERSION:
        raise ShardSchemaError(f"{path}: schema {manifest.get('schema')!r}; this version reads {SCHEMA_VERSION}.")
    return manifest


def expected_shapes(manifest: dict, subject_id: str) -> dict[str, tuple[int, ...]]:
    info = manifest["info"]
    bold = manifest["subjects"][subject_id]["bold_shape"]
    return member_shapes(bold, info["llv_dim"], info["hlv_dim"], len(info["classes"]))


def shard_url(url: str, shard: dict) -> str:
    return storage.join(url, shard["name"])
