"""What the report computes from a trained model: attention of the readout tokens, token similarity.

Shape legend: B batch, M tokens of a dataset's tokenizer, N subjects, D width.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.model import MusedModel

__all__ = ["readout_attention_by_subject", "token_names", "token_similarity"]


def token_names(model: MusedModel, stream: DatasetStream) -> list[str]:
    """One name per token of the dataset's tokenizer: ROI names, or grid cells (x, y, z) of a volume."""
    if stream.info["kind"] == "roi":
        return [roi["name"] for roi in stream.info["rois"]]
    grid = model.tokenizers[stream.name].grid
    return [f"({x},{y},{z})" for x, y, z in itertools.product(*map(range, grid))]  # X-major, as the tokenizer


@torch.no_grad()
def readout_attention_by_subject(
    model: MusedModel, stream: DatasetStream, split: str = "test", max_per_subject: int = 256, batch_size: int = 128
) -> dict[str, dict]:
    """Per subject: mean last-layer attention of the llv and hlv tokens over the dataset's tokens.

    Returns {subject: {"tokens": (2, M) attention renormalised over the M dataset tokens (row 0 llv,
    row 1 hlv), "readout_share": (2,) share of the attention that went to the two readout tokens
    themselves, "n": samples}}. At most `max_per_subject` samples of the split per subject.
    """
    model = model.eval()
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((2, 2 + model.tokenizers[stream.name].num_tokens)))
    counts: dict[str, int] = defaultdict(int)
    for batch in eval_batches(stream, split, batch_size):
        subjects = np.asarray(batch["subject"])
        keep = np.zeros(len(subjects), dtype=bool)
        for sid in dict.fromkeys(subjects.tolist()):
            rows = np.flatnonzero(subjects == sid)[: max(0, max_per_subject - counts[sid])]
            keep[rows] = True
            counts[sid] += len(rows)
        if not keep.any():
            continue
        index = torch.from_numpy(np.flatnonzero(keep))
        attn_B2L = model.readout_attention(batch["bold"][index].float(), batch["subject_row"][index], stream.name)
        for sid, a in zip(subjects[keep].tolist(), attn_B2L.double().numpy(), strict=True):
            sums[sid] += a
        if all(counts[s] >= max_per_subject for s in stream.subjects):
            break
    out = {}
    for sid in stream.subjects:
        if not counts[sid]:
            continue
        mean = sums[sid] / counts[sid]  # (2, 2 + M)
        tokens = mean[:, 2:]
        out[sid] = {
            "tokens": tokens / tokens.sum(1, keepdims=True),
            "readout_share": mean[:, :2].sum(1),
            "n": counts[sid],
        }
    return out


@torch.no_grad()
def token_similarity(model: MusedModel, adapted: Sequence[MusedModel] = ()) -> dict | None:
    """Cosine similarity of the subjects' tokens: {"ids", "llv" (N, N), "hlv" (N, N)} (mode two).

    `adapted`: models with subjects added to `model` (launch/adapt_subject.py exports); their added
    rows join the matrices. Mode one has one embedding per subject (given as both llv and hlv); mode
    none has no subject tokens (None).
    """
    table = model.subject_tokens.full_table()
    if table is None:
        return None
    ids, rows = list(model.registry.ids), [table.detach()]
    for other in adapted:
        added = [s for s in other.registry.ids if s not in ids]
        if added:
            rows.append(other.subject_tokens.full_table().detach()[other.registry.rows(added)])
            ids += added
    unit = torch.nn.functional.normalize(torch.cat(rows).double(), dim=-1)  # (N, S, D)
    sims = torch.einsum("isd,jsd->sij", unit, unit).numpy()  # (S, N, N)
    return {"ids": ids, "llv": sims[0], "hlv": sims[-1]}
