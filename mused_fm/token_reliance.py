"""Does a model use its subject tokens? Test metrics with each subject's tokens replaced.

    own      each subject's own tokens (the model as trained)
    mean     every subject of a dataset gets the mean of that dataset's tokens
    swapped  each subject gets another subject's tokens (the dataset's rows rotated by one)
    zeroed   the subject tokens are zero (only the position embedding is left in the readout slots)

A model that decodes as well with mean or swapped tokens as with its own does not rely on them.
"""

from __future__ import annotations

import copy

import torch

from mused_fm.data.pipeline import DatasetStream
from mused_fm.evaluate import evaluate_streams
from mused_fm.files import json_safe
from mused_fm.model import MusedModel

__all__ = ["VARIANTS", "token_reliance"]

VARIANTS = ("own", "mean", "swapped", "zeroed")


@torch.no_grad()
def token_reliance(model: MusedModel, streams: dict[str, DatasetStream], split: str = "test") -> dict | None:
    """{variant: evaluate_streams dict} for VARIANTS, or None for a model without per-subject tokens."""
    if model.subject_tokens.full_table() is None:
        return None
    model = model.eval()
    perm = torch.arange(len(model.registry))
    averaged, zeroed = copy.deepcopy(model), copy.deepcopy(model)
    table = averaged.subject_tokens.table  # from_pretrained holds every row in `table`
    for stream in streams.values():
        rows = torch.tensor([model.registry.rows([s]).item() for s in stream.subjects])
        perm[rows] = rows.roll(1)
        table.data[rows] = table.data[rows].mean(0, keepdim=True)
    zeroed.subject_tokens.table.data.zero_()
    forwards = {
        "own": model,
        "mean": averaged,
        "swapped": lambda bold, rows, ds: model(bold, perm[rows], ds),
        "zeroed": zeroed,
    }
    return {name: json_safe(evaluate_streams(forwards[name], streams, split, 256)) for name in VARIANTS}
