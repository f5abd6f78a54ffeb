"""Predictions with class names: one row per sample (or per stimulus, repeats averaged), for users' analyses.

    rows = predict_streams(model, {"nsd": stream}, "test", top_k=5, threshold=0.5)
    write_predictions(rows, "predictions.jsonl")     # or .csv

A row: {"subject", "stimulus", "split", "top": [[class, probability], ...] (top_k, most probable first),
"predicted": [classes with probability >= threshold], "true": [the sample's label names]} (+ "repeats" when
averaged). Class names come from the export (config.json "classes"). Each sample is read by exactly one rank
(the shards are split as in evaluation) and rank 0 gathers the rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.data.storage import write_bytes
from mused_fm.distributed import DistInfo, all_gather_objects
from mused_fm.errors import InputError
from mused_fm.model import MusedModel
from mused_fm.model.predictions import prediction_rows

__all__ = ["predict_streams", "write_predictions"]


@torch.no_grad()
def predict_streams(
    model: MusedModel,
    streams: Mapping[str, DatasetStream],
    split: str = "test",
    top_k: int = 5,
    threshold: float = 0.5,
    average_repeats: bool = False,
    batch_size: int = 256,
    dist: DistInfo | None = None,
) -> list[dict] | None:
    """Rows of every sample of `split` of the streams' subjects (on rank 0; None on the others): a collective."""
    dist = dist or DistInfo.single()
    model.eval()
    local = []
    for name, stream in streams.items():
        for batch in eval_batches(stream, split, batch_size, dist.rank, dist.world_size):
            bold = batch["bold"].to(dist.device, torch.float32)  # float16 in the shards
            logits = model(bold, batch["subject_row"].to(dist.device), name).logits
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            local.append((name, probs, batch["labels"].numpy(), list(batch["subject"]), list(batch["stimulus"])))
    parts = all_gather_objects(local) if dist.world_size > 1 else [local]
    if not dist.is_main:
        return None
    items = [item for part in parts for item in part]
    if average_repeats:
        rows = _averaged(items, model, split, top_k, threshold)
    else:
        rows = [
            row
            for name, probs, labels, subjects, stimuli in items
            for row in prediction_rows(
                probs,
                model.class_names_of(name),
                top_k,
                threshold,
                labels,
                subject=subjects,
                stimulus=stimuli,
                split=[split] * len(subjects),
            )
        ]
    return sorted(rows, key=lambda r: (r["subject"], r["stimulus"]))


def _averaged(items: list, model: MusedModel, split: str, top_k: int, threshold: float) -> list[dict]:
    """One row per (subject, stimulus): the mean probability over its repeats (NSD shows each image 3 times)."""
    groups: dict[tuple[str, str, str], list] = {}
    for name, probs, labels, subjects, stimuli in items:
        for i, key in enumerate(zip([name] * len(subjects), subjects, stimuli, strict=True)):
            groups.setdefault(key, []).append((probs[i], labels[i]))
    rows = []
    for (name, subject, stimulus), repeats in groups.items():
        mean = np.mean([p for p, _ in repeats], axis=0)[None]
        row = prediction_rows(
            mean,
            model.class_names_of(name),
            top_k,
            threshold,
            repeats[0][1][None],
            subject=[subject],
            stimulus=[stimulus],
            split=[split],
        )[0]
        rows.append({**row, "repeats": len(repeats)})
    return rows


def write_predictions(rows: list[dict], out: str | Path) -> None:
    """`.jsonl` (one JSON object per line) or `.csv` (lists joined by ';', top as class:probability)."""
    out = str(out)
    if out.endswith(".jsonl"):
        data = "".join(json.dumps(row) + "\n" for row in rows)
    elif out.endswith(".csv"):
        buffer = io.StringIO()
        columns = ["subject", "stimulus", "split", "top", "predicted", "true"] + (
            ["repeats"] if rows and "repeats" in rows[0] else []
        )
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = {**row, "top": ";".join(f"{c}:{p:.4f}" for c, p in row["top"])}
            flat.update({k: ";".join(row.get(k, [])) for k in ("predicted", "true")})
            writer.writerow(flat)
        data = buffer.getvalue()
    else:
        raise InputError(f"--out {out}: expected a .jsonl or .csv file name.")
    write_bytes(out, data.encode())
