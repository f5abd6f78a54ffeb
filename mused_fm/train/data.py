"""The recipe's datasets against their shards: URLs, manifests, subject ids, class counts, checks.

Every mismatch between the recipe and what pack-* wrote is found here, before any process group work,
and named with the recipe key that fixes it.
"""

from __future__ import annotations

import dataclasses

from mused_fm.config import Recipe
from mused_fm.data.manifest import read_manifest
from mused_fm.data.pipeline import DatasetStream

__all__ = ["open_streams", "resolve_datasets"]

PACKER = {"roi": "pack-nsd or pack-bids --atlas", "volume": "pack-hcp or pack-bids"}


def resolve_datasets(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe with num_classes filled in from the manifests, and the global subject ids to train.

    Raises ValueError naming the recipe key for: an empty URL, a manifest of another kind of input,
    ROI dims or a volume shape the shards do not have, a class count that disagrees, unknown subjects.
    """
    datasets = {}
    ids: list[str] = []
    for name, ds in recipe.data.datasets.items():
        key = f"data.datasets.{name}"
        if not ds.url:
            raise ValueError(
                f"{key}.url is empty: point it at shards written by `python -m shards_tools {PACKER[ds.input]}`, "
                f"a folder or s3://bucket/prefix, e.g. `deepspeed launch/train.py RECIPE {key}.url=s3://bucket/shards/{name}`."
            )  # fmt: skip
        manifest = read_manifest(ds.url)
        info = manifest["info"]
        where = f"{ds.url}/manifest.json"
        if info["kind"] != ds.input:
            raise ValueError(
                f"{key}.input is {ds.input!r} but {where} holds {info['kind']!r} samples; "
                f"set {key}.input={info['kind']}."
            )
        if ds.input == "roi" and (len(info["rois"]), info["roi_dim"]) != (ds.num_rois, ds.roi_dim):
            raise ValueError(
                f"{key}: the recipe expects {ds.num_rois} ROIs x {ds.roi_dim} features but {where} has "
                f"{len(info['rois'])} x {info['roi_dim']}; set {key}.num_rois={len(info['rois'])} "
                f"{key}.roi_dim={info['roi_dim']}."
            )
        if ds.input == "volume" and list(info["volume_shape"]) != list(ds.volume_shape):
            raise ValueError(
                f"{key}.volume_shape is {ds.volume_shape} but {where} has volumes of {info['volume_shape']}; "
                f"set {key}.volume_shape={','.join(map(str, info['volume_shape']))}."
            )
        n_classes = len(info["classes"])
        if ds.num_classes not in (0, n_classes):
            raise ValueError(
                f"{key}.num_classes is {ds.num_classes} but {where} lists {n_classes} classes; set it to "
                f"{n_classes}, or 0 to take it from the manifest."
            )
        known = list(manifest["subjects"])
        wanted = [f"{name}/{s}" for s in ds.subjects] if ds.subjects else known
        missing = [s for s in wanted if s not in known]
        if missing:
            raise ValueError(f"{key}.subjects lists {missing}, which {where} lacks (it has {', '.join(known)}).")
        datasets[name] = dataclasses.replace(ds, num_classes=n_classes)
        ids.extend(wanted)
    resolved = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, datasets=datasets))
    return resolved, ids


def open_streams(recipe: Recipe, subject_rows: dict[str, int], subject_ids: list[str]) -> dict[str, DatasetStream]:
    """One DatasetStream per dataset, limited to the subjects being trained."""
    streams = {}
    for name, ds in recipe.data.datasets.items():
        names = [s.split("/", 1)[1] for s in subject_ids if s.split("/", 1)[0] == name]
        streams[name] = DatasetStream(name, ds.url, subject_rows, names)
    return streams
