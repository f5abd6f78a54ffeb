"""Evaluation: predictions over a split of every dataset, each sample exactly once, metrics per subject.

Shape legend: B batch, C classes of the dataset.

Shard i of a split is read by rank i % world_size (mused_fm.data.eval_batches); the ranks' predictions
are gathered and scored on rank 0 in the DESIGN section 11 form:
    {"datasets": {"nsd": {"mAP", "AUC", "hamming", "n", "subject_mean"}}, "subjects": {"nsd/subj01": {...}}}

Under ZeRO-3 a forward pass is a collective (parameters are gathered layer by layer), so every rank
must run the same number of them: ranks with fewer batches run padding passes whose outputs are
discarded (`pad=True`). The batch counts come from the manifest, so no rank has to ask.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from mused_fm.data import storage
from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.distributed import all_gather_objects
from mused_fm.metrics import grouped_metrics
from mused_fm.model import MusedModel, MusedOutput

__all__ = [
    "check_shapes",
    "evaluate_model",
    "evaluate_streams",
    "json_safe",
    "load_export",
    "mean_map",
    "merge_metrics",
    "open_for_model",
    "write_json",
]

logger = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor, torch.Tensor, str], MusedOutput]


def _batch_counts(stream: DatasetStream, split: str, batch_size: int, world_size: int) -> list[int]:
    shards = stream.shards(split)
    return [math.ceil(sum(s["count"] for s in shards[r::world_size]) / batch_size) for r in range(world_size)]


@torch.no_grad()
def _predict(forward: Forward, stream: DatasetStream, split: str, batch_size: int, device: torch.device,
             dtype: torch.dtype, rank: int, world_size: int, pad: bool) -> dict[str, np.ndarray]:  # fmt: skip
    probs, labels, subjects = [], [], []
    last = None
    for batch in eval_batches(stream, split, batch_size, rank, world_size):
        out = forward(batch["bold"].to(device, dtype), batch["subject_row"].to(device), stream.name)
        probs.append(torch.sigmoid(out.logits.float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
        subjects.extend(batch["subject"])
        last = batch
    if pad:
        extra = max(_batch_counts(stream, split, batch_size, world_size)) - len(probs)
        if extra > 0 and last is None:  # this rank read nothing: any well-formed input will do
            last = _zero_batch(stream)
        for _ in range(extra):
            forward(last["bold"].to(device, dtype), last["subject_row"].to(device), stream.name)
    n_classes = len(stream.info["classes"])
    return {
        "probs": np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0, n_classes), np.uint8),
        "subjects": np.asarray(subjects, dtype=str),
    }


def _zero_batch(stream: DatasetStream) -> dict[str, torch.Tensor]:
    info = stream.info
    shape = info["volume_shape"] if info["kind"] == "volume" else [len(info["rois"]), info["roi_dim"]]
    row = next(iter(stream.rows.values()))
    return {"bold": torch.zeros(1, *shape), "subject_row": torch.tensor([row])}


def evaluate_streams(
    forward: Forward,
    streams: Mapping[str, DatasetStream],
    split: str,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
    pad: bool = False,
) -> dict | None:
    """Metrics of `split` per dataset and subject on rank 0 (None on other ranks); a collective.

    Args:
        forward: the model's forward (bold, subject rows, dataset) -> MusedOutput, in eval mode.
        pad: run padding passes so every rank runs as many forwards (needed under ZeRO-3).
    """
    results = []
    for stream in streams.values():
        local = _predict(forward, stream, split, batch_size, device, dtype, rank, world_size, pad)
        parts = all_gather_objects(local) if world_size > 1 else [local]
        if rank != 0:
            continue
        merged = {k: np.concatenate([p[k] for p in parts]) for k in local}
        if not len(merged["subjects"]):
            raise ValueError(f"{stream.url} has no {split!r} samples for {stream.subjects}.")
        results.append(grouped_metrics(merged["probs"], merged["labels"], merged["subjects"].tolist()))
    return merge_metrics(results) if rank == 0 else None


def merge_metrics(parts: list[dict]) -> dict:
    """One {"datasets", "subjects"} dict from per-dataset ones (datasets have their own class lists)."""
    return {
        "datasets": {k: v for p in parts for k, v in p["datasets"].items()},
        "subjects": {k: v for p in parts for k, v in p["subjects"].items()},
    }


def mean_map(metrics: dict) -> float:
    """Model-selection score: the mean over datasets of the dataset mAP."""
    return float(np.mean([d["mAP"] for d in metrics["datasets"].values()]))


def json_safe(value):
    """NaN (a metric undefined for a subject, e.g. AUC without negatives) -> None, so the JSON is valid."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def evaluate_model(checkpoint: Path, shard_urls: list[str], split: str, batch_size: int, subjects: list[str],
                   device: torch.device) -> dict:  # fmt: skip
    """What launch/evaluate.py computes: an export against shard sets, in one process."""
    model = load_export(checkpoint).to(device).eval()
    rows = {s: i for i, s in enumerate(model.registry.ids)}
    unknown = [s for s in subjects if s not in rows]
    if unknown:
        raise ValueError(
            f"--subjects {unknown} are not in {checkpoint}/registry.json ({', '.join(model.registry.ids)})."
        )
    streams: dict[str, DatasetStream] = {}
    for url in shard_urls:
        stream = open_for_model(model, url)
        name = stream.name
        chosen = [s for s in stream.subjects if (s in subjects if subjects else s in rows)]
        skipped = [s for s in stream.subjects if s not in rows]
        if skipped and not subjects:
            logger.info(
                "%s: skipping %s, not in the model's registry (add them with launch/adapt_subject.py)", url, skipped
            )
        if not chosen and subjects:  # --subjects names none of this shard set's subjects
            continue
        if not chosen:
            raise ValueError(f"{url}: none of its subjects ({', '.join(stream.subjects)}) is in the model's registry.")
        stream.subjects = chosen
        streams[name] = stream
    uncovered = sorted(set(subjects) - {s for st in streams.values() for s in st.subjects})
    if uncovered:
        raise ValueError(f"--subjects {uncovered} are in none of the --shards sets ({', '.join(shard_urls)}).")
    return json_safe(evaluate_streams(model, streams, split, batch_size, device))


def open_for_model(model: MusedModel, url: str) -> DatasetStream:
    """A shard set as `model` reads it, all of its manifest's subjects (callers choose among them).

    Named errors: a dataset the model has no head for, samples that do not fit its tokenizer or head.
    """
    stream = DatasetStream(_dataset_of(url), url, {s: i for i, s in enumerate(model.registry.ids)})
    if stream.name not in model.datasets:
        raise ValueError(
            f"{url} holds dataset {stream.name!r}, which the model has no head for ({sorted(model.datasets)})."
        )
    check_shapes(stream.info, model.datasets[stream.name], stream.name, url)
    return stream


def load_export(checkpoint: str | Path) -> MusedModel:
    """A MusedModel from an export directory, or from a run directory's export/."""
    path = Path(checkpoint)
    return MusedModel.from_pretrained(path / "export" if (path / "export").is_dir() else path)


def write_json(path: str | Path, payload) -> None:
    """Strict JSON (no NaN), written atomically to a file or an s3:// URL."""
    storage.write_bytes(str(path), (json.dumps(payload, indent=1, allow_nan=False) + "\n").encode())


def _dataset_of(url: str) -> str:
    from mused_fm.data.manifest import read_manifest

    return read_manifest(url)["info"]["dataset"]


def check_shapes(info: dict, spec, dataset: str, url: str) -> None:
    """Shards (their manifest's info) against the model's tokenizer and head for `dataset`: named errors."""
    if info["kind"] != spec.input:
        raise ValueError(
            f"{url} holds {info['kind']!r} samples but the model's {dataset!r} tokenizer takes {spec.input!r}."
        )
    have = (len(info["rois"]), info["roi_dim"]) if info["kind"] == "roi" else tuple(info["volume_shape"])
    want = (spec.num_rois, spec.roi_dim) if spec.input == "roi" else tuple(spec.volume_shape)
    if have != want:
        raise ValueError(
            f"{url}: samples of shape {have}, but the model's {dataset!r} tokenizer takes {want}; pack the shards "
            "with the settings the model was trained on (see its config.json)."
        )
    if len(info["classes"]) != spec.num_classes:
        raise ValueError(
            f"{url}: {len(info['classes'])} classes, but the model's {dataset!r} head has {spec.num_classes}."
        )
