"""The recipe's datasets against their shards: URLs, manifests, subject ids, class counts, checks.

Every mismatch between the recipe and what pack-* wrote is found here, before any process group work,
and named with the recipe key that fixes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from mused_fm.config import Recipe
from mused_fm.data import storage
from mused_fm.data.manifest import PACKER, Manifest, check_compatible
from mused_fm.data.pipeline import DatasetStream
from mused_fm.errors import RecipeError
from mused_fm.subject_ids import global_id, split_id

__all__ = ["open_streams", "resolve_datasets"]

PACK_COMMAND = {"nsd": "pack-nsd", "hcp": "pack-hcp"}  # the packer of the datasets the README packs by name


def resolve_datasets(recipe: Recipe) -> tuple[Recipe, list[str], dict[str, Manifest]]:
    """The recipe with num_classes filled in from the manifests, the global subject ids to train, the manifests.

    Raises a named error naming the recipe key for: an empty URL, a manifest of another kind of input,
    ROI dims or a volume shape the shards do not have, a class count that disagrees, unknown subjects.
    """
    datasets, manifests = {}, {}
    ids: list[str] = []
    for name, ds in recipe.data.datasets.items():
        key = f"data.datasets.{name}"
        if not ds.url:
            raise RecipeError(
                f"{key}.url is empty: point it at shards written by `python -m shards_tools {PACKER[ds.input]}`, "
                f"a folder or s3://bucket/prefix, e.g. "
                f"`deepspeed launch/train.py RECIPE {key}.url=s3://bucket/shards/{name}`."
            )
        if not storage.is_remote(ds.url) and not storage.exists(ds.url):  # a local folder: name its packer
            raise RecipeError(
                f"{key}.url is {ds.url!r}, which does not exist (from {Path.cwd()}): write it with "
                f"`python -m shards_tools {PACK_COMMAND.get(name, PACKER[ds.input])} ... --out {ds.url}` (README, "
                f"Pack shards), or point "
                f"{key}.url at your shards (`deepspeed launch/train.py RECIPE {key}.url=PATH_OR_S3_PREFIX`)."
            )
        manifest = Manifest.read(ds.url)
        check_compatible(ds, manifest, key)
        wanted = [global_id(name, s) for s in ds.subjects] if ds.subjects else list(manifest.subjects)
        manifest.require_subjects(wanted, f"{key}.subjects")
        datasets[name] = dataclasses.replace(ds, num_classes=len(manifest.classes))
        manifests[name] = manifest
        ids.extend(wanted)
    resolved = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, datasets=datasets))
    return resolved, ids, manifests


def open_streams(
    recipe: Recipe, manifests: Mapping[str, Manifest], subject_rows: Mapping[str, int], subject_ids: list[str]
) -> dict[str, DatasetStream]:
    """One DatasetStream per dataset, limited to the subjects being trained, with the recipe's CLIP targets."""
    chosen = [split_id(s) for s in subject_ids]
    datasets = recipe.data.datasets
    return {
        name: DatasetStream(
            manifest,
            subject_rows,
            [n for d, n in chosen if d == name],
            f"data.datasets.{name}.subjects",
            shuffled_clip=recipe.run.seed if datasets[name].clip_features == "shuffled" else None,
        )
        for name, manifest in manifests.items()
    }
