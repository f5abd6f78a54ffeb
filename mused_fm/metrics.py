"""Multi-label decoding metrics: mAP, AUC and Hamming distance, per subject and per dataset.

Shape legend: B samples, C classes.

Conventions (what the paper's figures and scikit-learn compute, made explicit):
- mAP: mean over classes that have at least one positive of the average precision
  sum_k (R_k - R_{k-1}) P_k over distinct score thresholds (scikit-learn's
  average_precision_score, no interpolation).
- AUC: mean over classes that have both positives and negatives of the ROC AUC (ties count 1/2,
  as scikit-learn's roc_auc_score). The official CLIP-MUSED code gives such classes 1.0
  instead of skipping them, which inflates its mean; ours skips them.
- hamming: share of (sample, class) entries where (p >= threshold) differs from the target, over
  all classes (scikit-learn's hamming_loss).
A metric with no eligible class is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from mused_fm.subject_ids import dataset_of

__all__ = ["average_precision", "grouped_metrics", "multilabel_metrics", "roc_auc", "stimulus_means"]


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def average_precision(scores_B: np.ndarray, targets_B: np.ndarray) -> float:
    """Step-wise average precision of one class; ties in score form one threshold."""
    order = np.argsort(-scores_B, kind="mergesort")
    scores, hits = scores_B[order], targets_B[order].astype(bool)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # end index of each threshold
    tp = np.cumsum(hits)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def roc_auc(scores_BC: np.ndarray, targets_BC: np.ndarray) -> np.ndarray:
    """ROC AUC per column by the Mann-Whitney U statistic with mid-ranks for ties, (C,)."""
    ranks = rankdata(scores_BC, axis=0)  # average ranks: a tie contributes 1/2
    pos = targets_BC.astype(bool)
    n_pos = pos.sum(0)
    n_neg = pos.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def multilabel_metrics(
    probs_BC: np.ndarray | torch.Tensor, targets_BC: np.ndarray | torch.Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """{"mAP", "AUC", "hamming"} of probabilities (or any monotone scores, for mAP and AUC)."""
    probs, targets = _as_numpy(probs_BC).astype(np.float64), _as_numpy(targets_BC)
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"expected probs and targets of one shape (B, C), got {probs.shape} and {targets.shape}.")
    targets = targets.astype(bool)
    n_pos = targets.sum(0)
    has_pos = np.flatnonzero(n_pos > 0)
    has_both = np.flatnonzero((n_pos > 0) & (n_pos < targets.shape[0]))
    ap = [average_precision(probs[:, c], targets[:, c]) for c in has_pos]
    auc = roc_auc(probs[:, has_both], targets[:, has_both])
    return {
        "mAP": float(np.mean(ap)) if ap else float("nan"),
        "AUC": float(np.mean(auc)) if auc.size else float("nan"),
        "hamming": float(np.mean((probs >= threshold) != targets)) if targets.size else float("nan"),
    }


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def grouped_metrics(
    probs_BC: np.ndarray | torch.Tensor,
    targets_BC: np.ndarray | torch.Tensor,
    subject_ids: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per subject and per dataset (the dataset is the part of the id before '/').

    Datasets with different class lists must be passed separately (one call per dataset, then
    merge the dicts); within a call, all rows share the columns.

    Returns:
        {"datasets": {name: {mAP, AUC, hamming, n, subject_mean: {mAP, AUC, hamming}}},
         "subjects": {id: {mAP, AUC, hamming, n}}}: dataset figures pool the dataset's samples;
        subject_mean averages the per-subject figures (the paper reports per-subject means).
    """
    probs, targets = _as_numpy(probs_BC), _as_numpy(targets_BC)
    ids = np.asarray(list(subject_ids))
    if ids.shape[0] != probs.shape[0]:
        raise ValueError(f"{ids.shape[0]} subject ids for {probs.shape[0]} rows of probabilities.")
    subjects: dict[str, dict[str, float]] = {}
    for sid in dict.fromkeys(ids.tolist()):
        rows = ids == sid
        subjects[sid] = {**multilabel_metrics(probs[rows], targets[rows], threshold), "n": int(rows.sum())}
    datasets: dict[str, dict] = {}
    names = np.asarray([dataset_of(s) for s in ids.tolist()])
    for name in dict.fromkeys(names.tolist()):
        rows = names == name
        members = [m for sid, m in subjects.items() if dataset_of(sid) == name]
        datasets[name] = {
            **multilabel_metrics(probs[rows], targets[rows], threshold),
            "n": int(rows.sum()),
            "subject_mean": {k: _finite_mean([m[k] for m in members]) for k in ("mAP", "AUC", "hamming")},
        }
    return {"datasets": datasets, "subjects": subjects}


def stimulus_means(
    probs_BC: np.ndarray, targets_BC: np.ndarray, subject_ids: Sequence[str], stimuli: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One row per (subject, stimulus): the mean prediction over the stimulus's repeats (NSD shows each
    test image 3 times per subject). Rows keep first-seen order; a stimulus's repeats share its labels.

    Returns: (probs (S, C), targets (S, C), subject id per row).
    """
    probs, targets = _as_numpy(probs_BC).astype(np.float64), _as_numpy(targets_BC)
    keys = list(zip(subject_ids, stimuli, strict=True))
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    rows = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    sums = np.zeros((len(index), probs.shape[1]))
    np.add.at(sums, rows, probs)
    counts = np.bincount(rows, minlength=len(index))[:, None]
    first = np.zeros(len(index), dtype=np.int64)
    first[rows[::-1]] = np.arange(len(rows))[::-1]  # the first row of each key
    return sums / counts, targets[first], [k[0] for k in index]
