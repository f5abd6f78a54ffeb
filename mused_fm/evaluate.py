"""Evaluation: predictions over a split of every dataset, each sample exactly once, metrics per subject.

Shape legend: B batch, C classes of the dataset.

Shard i of a split is read by rank i % world_size (mused_fm.data.eval_batches); the ranks' predictions
are gathered and scored on rank 0 in the form launch/evaluate.py writes to eval.json:
    {"datasets": {"nsd": {"mAP", "AUC", "hamming", "n", "subject_mean"}}, "subjects": {"nsd/subj01": {...}},
     "repeat_mean": {"datasets": ..., "subjects": ...}}
where the figures score each sample (trial) and repeat_mean scores the mean prediction over each stimulus's
repeats within a subject (NSD shows each test image 3 times; a stimulus seen once is its own mean).

Under ZeRO-3 a forward pass is a collective (parameters are gathered layer by layer), so every rank
must run the same number of them: ranks with fewer batches run padding passes whose outputs are
discarded (`pad=True`). The batch counts come from the manifest, so no rank has to ask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from mused_fm.data.manifest import Manifest, check_compatible
from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.distributed import DistInfo, all_gather_objects
from mused_fm.errors import ShardSchemaError, UnknownSubjectError
from mused_fm.files import json_safe
from mused_fm.metrics import grouped_metrics, stimulus_means
from mused_fm.model import MusedModel, MusedOutput, load_export

__all__ = ["evaluate_model", "evaluate_streams", "mean_map", "merge_metrics", "open_for_model"]

logger = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor, torch.Tensor, str], MusedOutput]


def _batch_counts(stream: DatasetStream, split: str, batch_size: int, world_size: int) -> list[int]:
    shards = stream.shards(split)
    return [math.ceil(sum(s["count"] for s in shards[r::world_size]) / batch_size) for r in range(world_size)]


@torch.no_grad()
def _predict(
    forward: Forward, stream: DatasetStream, split: str, batch_size: int, dist: DistInfo, dtype: torch.dtype, pad: bool
) -> dict[str, np.ndarray]:
    device = dist.device
    probs, labels, subjects, stimuli = [], [], [], []
    last = None
    skipped: dict[str, int] = {}
    for batch in eval_batches(stream, split, batch_size, dist.rank, dist.world_size, skipped):
        out = forward(batch["bold"].to(device, dtype), batch["subject_row"].to(device), stream.name)
        probs.append(torch.sigmoid(out.logits.float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
        subjects.extend(batch["subject"])
        stimuli.extend(batch["stimulus"])
        last = batch
    if pad:
        extra = max(_batch_counts(stream, split, batch_size, dist.world_size)) - len(probs)
        if extra > 0 and last is None:  # this rank read nothing: any well-formed input will do
            last = _zero_batch(stream)
        for _ in range(extra):
            forward(last["bold"].to(device, dtype), last["subject_row"].to(device), stream.name)
    n_classes = len(stream.info["classes"])
    return {
        "probs": np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0, n_classes), np.uint8),
        "subjects": np.asarray(subjects, dtype=str),
        "stimuli": np.asarray(stimuli, dtype=str),
        "n_skipped": np.asarray([sum(skipped.values())]),
    }


def _zero_batch(stream: DatasetStream) -> dict[str, torch.Tensor]:
    row = next(iter(stream.rows.values()))
    return {"bold": torch.zeros(1, *stream.manifest.input_shape), "subject_row": torch.tensor([row])}


def evaluate_streams(
    forward: Forward,
    streams: Mapping[str, DatasetStream],
    split: str,
    batch_size: int,
    dist: DistInfo | None = None,
    dtype: torch.dtype = torch.float32,
    pad: bool = False,
    repeat_mean: bool = False,
) -> dict | None:
    """Metrics of `split` per dataset and subject on rank 0 (None on other ranks); a collective.

    Args:
        forward: the model's forward (bold, subject rows, dataset) -> MusedOutput, in eval mode.
        dist: the ranks that share the work, and this one's device; None: one process on the CPU.
        pad: run padding passes so every rank runs as many forwards (needed under ZeRO-3).
        repeat_mean: also score the mean prediction of each stimulus's repeats (test figures; validation
            during training needs only the per-trial mAP).
    """
    dist = dist or DistInfo.single()
    results = []
    for stream in streams.values():
        local = _predict(forward, stream, split, batch_size, dist, dtype, pad)
        parts = all_gather_objects(local) if dist.world_size > 1 else [local]
        if not dist.is_main:
            continue
        merged = {k: np.concatenate([p[k] for p in parts]) for k in local}
        if not len(merged["subjects"]):
            raise ShardSchemaError(f"{stream.url} has no readable {split!r} samples for {stream.subjects}.")
        result = grouped_metrics(merged["probs"], merged["labels"], merged["subjects"].tolist())
        result["datasets"][stream.name]["n_skipped"] = int(merged["n_skipped"].sum())  # unreadable, named in the log
        if repeat_mean:
            averaged = stimulus_means(merged["probs"], merged["labels"], merged["subjects"], merged["stimuli"])
            result["repeat_mean"] = grouped_metrics(*averaged)
        results.append(result)
    return merge_metrics(results) if dist.is_main else None


def merge_metrics(parts: list[dict]) -> dict:
    """One {"datasets", "subjects"[, "repeat_mean"]} dict from per-dataset ones (each has its own classes)."""
    merged = {
        "datasets": {k: v for p in parts for k, v in p["datasets"].items()},
        "subjects": {k: v for p in parts for k, v in p["subjects"].items()},
    }
    if parts and all("repeat_mean" in p for p in parts):
        merged["repeat_mean"] = merge_metrics([p["repeat_mean"] for p in parts])
    return merged


def mean_map(metrics: dict) -> float:
    """Model-selection score: the mean over datasets of the dataset mAP."""
    return float(np.mean([d["mAP"] for d in metrics["datasets"].values()]))


def evaluate_model(
    checkpoint: Path, shard_urls: list[str], split: str, batch_size: int, subjects: list[str], device: torch.device
) -> dict:
    """What launch/evaluate.py computes: an export against shard sets, in one process."""
    model = load_export(checkpoint).to(device).eval()
    unknown = [s for s in subjects if s not in model.registry]
    if unknown:
        raise UnknownSubjectError(
            f"--subjects {unknown} are not in {checkpoint}/registry.json ({', '.join(model.registry.ids)})."
        )
    streams: dict[str, DatasetStream] = {}
    for url in shard_urls:
        stream = open_for_model(model, url)
        chosen = [s for s in stream.subjects if (s in subjects if subjects else s in model.registry)]
        skipped = [s for s in stream.subjects if s not in model.registry]
        if skipped and not subjects:
            logger.info(
                "%s: skipping %s, not in the model's registry (add them with launch/adapt_subject.py)", url, skipped
            )
        if not chosen and subjects:  # --subjects names none of this shard set's subjects
            continue
        if not chosen:
            raise UnknownSubjectError(
                f"{url}: none of its subjects ({', '.join(stream.subjects)}) is in the model's registry."
            )
        stream.subjects = chosen
        streams[stream.name] = stream
    uncovered = sorted(set(subjects) - {s for st in streams.values() for s in st.subjects})
    if uncovered:
        raise UnknownSubjectError(f"--subjects {uncovered} are in none of the --shards sets ({', '.join(shard_urls)}).")
    return json_safe(evaluate_streams(model, streams, split, batch_size, DistInfo.single(device), repeat_mean=True))


def open_for_model(model: MusedModel, url: str) -> DatasetStream:
    """A shard set as `model` reads it, all of its manifest's subjects (callers choose among them).

    Named errors: a dataset the model has no head for, samples that do not fit its tokenizer or head.
    """
    manifest = Manifest.read(url)
    if manifest.dataset not in model.datasets:
        raise ShardSchemaError(
            f"{url} holds dataset {manifest.dataset!r}, which the model has no head for ({sorted(model.datasets)})."
        )
    check_compatible(model.datasets[manifest.dataset], manifest)
    return DatasetStream(manifest, model.registry.row_of)
