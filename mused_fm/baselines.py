"""The simplest decoders a comparison must beat: a closed-form ridge per subject, and chance.

Shape legend: N training samples, P input features (ROI patches or masked voxels, flattened), C classes.

Ridge (one decoder per subject, no shared weights): centred inputs X (N, P) and targets Y (N, C),

    W = X^T (X X^T + lam I)^-1 (Y - mean Y)         (the dual form: N is a few hundred, P up to ~10^4)

with lam = alpha * mean(diag(X X^T)) and alpha chosen on the subject's validation split (best validation
mAP; ties go to the larger alpha), then scored on the test split in the form of eval.json, per trial and
with each stimulus's repeats averaged. Chance: random scores, the mean of `draws` seeded draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.errors import ShardSchemaError
from mused_fm.evaluate import merge_metrics
from mused_fm.metrics import grouped_metrics, multilabel_metrics, stimulus_means
from mused_fm.subject_ids import name_of

__all__ = ["ALPHAS", "SplitArrays", "chance_metrics", "fit_ridge", "ridge_metrics"]

ALPHAS = tuple(10.0**k for k in range(-4, 3))  # relative to the mean squared norm of a training sample


@dataclass
class SplitArrays:
    """One subject's split: inputs flattened to (N, P) float32, labels (N, C), stimulus ids (N,)."""

    x: np.ndarray
    y: np.ndarray
    stimuli: list[str]

    @classmethod
    def read(cls, stream: DatasetStream, split: str) -> SplitArrays:
        """The split of the stream's one subject; volumes keep the subject's masked voxels only."""
        mask = stream.masks.get(stream.subjects[0]) if len(stream.subjects) == 1 else None
        xs, ys, stimuli = [], [], []
        for batch in eval_batches(stream, split, batch_size=256):
            x = batch["bold"].numpy().reshape(len(batch["labels"]), -1)
            xs.append((x if mask is None else x[:, mask]).astype(np.float32))  # (N, P), P masked voxels
            ys.append(batch["labels"].numpy())
            stimuli.extend(batch["stimulus"])
        if not xs:
            raise ShardSchemaError(f"{stream.url} has no readable {split!r} samples for {stream.subjects}.")
        return cls(np.concatenate(xs), np.concatenate(ys), stimuli)


def fit_ridge(x_NP: np.ndarray, y_NC: np.ndarray, alpha: float):
    """The ridge predictor of one subject: a function (M, P) -> (M, C) scores."""
    mean_x, mean_y = x_NP.mean(0, dtype=np.float64), y_NC.mean(0)
    xc = x_NP - mean_x.astype(x_NP.dtype)
    gram = (xc @ xc.T).astype(np.float64)  # (N, N): N is a few hundred to a few thousand
    lam = alpha * float(np.mean(np.diag(gram)))
    dual = np.linalg.solve(gram + lam * np.eye(len(gram)), y_NC - mean_y)  # (N, C)
    weights = (xc.T @ dual.astype(xc.dtype)).astype(np.float64)  # (P, C)
    return lambda x: (np.asarray(x, np.float64) - mean_x) @ weights + mean_y


def ridge_metrics(stream: DatasetStream, alphas: tuple[float, ...] = ALPHAS) -> dict:
    """eval.json-shaped test metrics of one ridge decoder per subject of `stream`, plus the chosen alphas."""
    parts, chosen = [], {}
    for subject in stream.subjects:
        one = _single_subject(stream, subject)
        train, val, test = (SplitArrays.read(one, split) for split in ("train", "val", "test"))
        scores = {a: multilabel_metrics(fit_ridge(train.x, train.y, a)(val.x), val.y)["mAP"] for a in alphas}
        best = max(alphas, key=lambda a: (np.nan_to_num(scores[a], nan=-1.0), a))
        chosen[subject] = {"alpha": best, "val_mAP": scores[best]}
        parts.append((fit_ridge(train.x, train.y, best)(test.x), test, subject))
    return {**_scored(parts), "ridge": chosen}


def chance_metrics(stream: DatasetStream, draws: int = 20, seed: int = 0) -> dict:
    """eval.json-shaped test metrics of random scores: the mean over `draws` seeded draws."""
    tests = [(SplitArrays.read(_single_subject(stream, s), "test"), s) for s in stream.subjects]
    rng = np.random.default_rng(seed)
    runs = [_scored([(rng.random(t.y.shape), t, s) for t, s in tests]) for _ in range(draws)]
    return _mean_of(runs)


def _single_subject(stream: DatasetStream, subject: str) -> DatasetStream:
    return DatasetStream(stream.manifest, stream.rows, [name_of(subject)])


def _scored(parts: list[tuple[np.ndarray, SplitArrays, str]]) -> dict:
    scores = np.concatenate([p for p, _, _ in parts])
    labels = np.concatenate([t.y for _, t, _ in parts])
    ids = [s for p, _, s in parts for _ in range(len(p))]
    stimuli = [x for _, t, _ in parts for x in t.stimuli]
    result = grouped_metrics(scores, labels, ids)
    result["repeat_mean"] = grouped_metrics(*stimulus_means(scores, labels, ids, stimuli))
    return merge_metrics([result])


def _mean_of(results: list[dict]):
    """The element-wise mean of nested dicts of numbers of one shape."""
    first = results[0]
    if isinstance(first, dict):
        return {k: _mean_of([r[k] for r in results]) for k in first}
    return float(np.mean(results))
