"""A shard set's manifest.json, read once into a typed `Manifest`, and the one check that shards fit a dataset.

`Manifest` is what the trainer, evaluation, adaptation, `verify` and `inspect` read: the dataset name,
the input kind and shape, the classes, the subjects with their counts, and the shards. `read_manifest`
returns the raw JSON (for writers that extend it and for tests); everything else goes through `Manifest`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from mused_fm.config import DatasetConfig
from mused_fm.data import storage
from mused_fm.data.schema import SCHEMA_VERSION, member_shapes
from mused_fm.errors import ShardSchemaError, UnknownSubjectError

__all__ = ["MANIFEST", "Manifest", "check_compatible", "read_manifest"]

MANIFEST = "manifest.json"
PACKER = {"roi": "pack-nsd or pack-bids --atlas", "volume": "pack-hcp or pack-bids"}


def read_manifest(url: str) -> dict:
    """The raw manifest JSON of the shard set at `url` (folder or s3:// prefix), with a named error if absent."""
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


@dataclass(frozen=True)
class Manifest:
    """A shard set: where it is (`url`) and what its manifest says (`raw`, the JSON)."""

    url: str
    raw: dict

    @classmethod
    def read(cls, url: str) -> Manifest:
        url = str(url).rstrip("/")
        return cls(url, read_manifest(url))

    @property
    def path(self) -> str:
        return storage.join(self.url, MANIFEST)

    @property
    def info(self) -> dict:
        return self.raw["info"]

    @property
    def dataset(self) -> str:
        return self.info["dataset"]

    @property
    def kind(self) -> str:
        """roi or volume."""
        return self.info["kind"]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's bold as the model reads it: (n_rois, roi_dim) or the volume grid (X, Y, Z)."""
        info = self.info
        return (len(info["rois"]), info["roi_dim"]) if self.kind == "roi" else tuple(info["volume_shape"])

    @property
    def subjects(self) -> dict[str, dict]:
        """Global subject id -> its entry (counts per split, bold_shape, preproc file)."""
        return self.raw["subjects"]

    def shards(self, split: str | None = None, subjects: Iterable[str] | None = None) -> list[dict]:
        """Shard entries, in manifest order, of one split (None: all) and of `subjects` (None: all)."""
        chosen = None if subjects is None else set(subjects)
        return [
            s
            for s in self.raw["shards"]
            if (split is None or s["split"] == split) and (chosen is None or s["subject"] in chosen)
        ]

    def shard_url(self, shard: dict) -> str:
        return storage.join(self.url, shard["name"])

    def preproc_url(self, subject_id: str) -> str:
        return storage.join(self.url, self.subjects[subject_id]["preproc"])

    def expected_shapes(self, subject_id: str) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every member of `subject_id`'s records."""
        info = self.info
        bold = self.subjects[subject_id]["bold_shape"]
        return member_shapes(bold, info["llv_dim"], info["hlv_dim"], len(info["classes"]))

    def require_subjects(self, subject_ids: Iterable[str], key: str) -> None:
        """Every id is in the manifest, or one named error: `key` is what listed them (a recipe key, a flag)."""
        missing = [s for s in subject_ids if s not in self.subjects]
        if missing:
            raise UnknownSubjectError(
                f"{key} lists {missing}, which {self.path} lacks (it has {', '.join(self.subjects)})."
            )


def check_compatible(config: DatasetConfig, manifest: Manifest, key: str | None = None) -> None:
    """Do these shards fit this dataset config? A named error naming both sides and the fix, if not.

    Args:
        key: the recipe key `config` came from (data.datasets.nsd): the fix is to set it, and
            num_classes 0 (take it from the manifest) is allowed. None: `config` is a trained model's
            dataset; the fix is to pack the shards with the model's settings.
    """
    where, have, n_classes = manifest.path, manifest.input_shape, len(manifest.classes)
    if key is None:
        owner = f"the model's {manifest.dataset!r} tokenizer"
        repack = "pack the shards with the settings the model was trained on (see its config.json)"
        fixes = {"input": repack, "shape": repack, "classes": repack}
    else:
        owner = f"{key} (the recipe)"
        shape_fix = (
            f"set {key}.num_rois={have[0]} {key}.roi_dim={have[-1]}"
            if manifest.kind == "roi"
            else f"set {key}.volume_shape={','.join(map(str, have))}"
        )
        fixes = {
            "input": f"set {key}.input={manifest.kind}",
            "shape": shape_fix,
            "classes": f"set {key}.num_classes={n_classes}, or 0 to take it from the manifest",
        }
    if manifest.kind != config.input:
        raise ShardSchemaError(
            f"{where} holds {manifest.kind!r} samples but {owner} takes {config.input!r}; {fixes['input']}."
        )
    if have != config.input_shape:
        raise ShardSchemaError(
            f"{where}: samples of shape {have}, but {owner} takes {config.input_shape}; {fixes['shape']}."
        )
    if config.num_classes != n_classes and not (key and config.num_classes == 0):
        raise ShardSchemaError(
            f"{where}: {n_classes} classes, but {owner} has {config.num_classes}; {fixes['classes']}."
        )
