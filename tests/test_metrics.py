"""Metrics equal scikit-learn's on the same classes, including ties and degenerate classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, hamming_loss, roc_auc_score

from mused_fm.metrics import grouped_metrics, multilabel_metrics


def make(seed=0, n=60, c=9):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.uint8)
    targets[:, 0] = 0  # no positives: left out of mAP and AUC
    targets[:, 1] = 1  # no negatives: left out of AUC only
    # Probabilities that carry signal, rounded so that many scores tie.
    probs = np.clip(np.round(0.35 * targets + 0.65 * rng.random((n, c)), 1), 0, 1)
    return probs, targets


def sklearn_reference(probs, targets, threshold=0.5):
    pos = targets.sum(0)
    has_pos = pos > 0
    has_both = has_pos & (pos < len(targets))
    return {
        "mAP": average_precision_score(targets[:, has_pos], probs[:, has_pos], average="macro"),
        "AUC": roc_auc_score(targets[:, has_both], probs[:, has_both], average="macro"),
        "hamming": hamming_loss(targets, (probs >= threshold).astype(np.uint8)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_equal_sklearn(seed):
    probs, targets = make(seed)
    got = multilabel_metrics(probs, targets)
    ref = sklearn_reference(probs, targets)
    for key in ("mAP", "AUC", "hamming"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_threshold_and_torch_inputs():
    probs, targets = make(3)
    got = multilabel_metrics(torch.tensor(probs), torch.tensor(targets), threshold=0.3)
    assert got["hamming"] == pytest.approx(hamming_loss(targets, (probs >= 0.3).astype(np.uint8)))
    assert got["mAP"] == pytest.approx(sklearn_reference(probs, targets)["mAP"], abs=1e-6)


def test_no_eligible_class_is_nan():
    got = multilabel_metrics(np.full((4, 2), 0.7), np.zeros((4, 2)))
    assert np.isnan(got["mAP"]) and np.isnan(got["AUC"]) and got["hamming"] == 1.0


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"one shape \(B, C\), got \(3, 2\) and \(3, 4\)"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 4)))


def test_grouped_metrics_per_subject_and_dataset():
    probs, targets = make(4, n=90)
    ids = ["nsd/subj01"] * 30 + ["nsd/subj02"] * 40 + ["nsd/subj05"] * 20
    rng = np.random.default_rng(0)
    order = rng.permutation(90)  # interleaved rows, as an evaluation stream delivers them
    probs, targets, ids = probs[order], targets[order], [ids[i] for i in order]
    got = grouped_metrics(probs, targets, ids)
    assert list(got["datasets"]) == ["nsd"]
    assert got["datasets"]["nsd"]["n"] == 90
    for key in ("mAP", "AUC", "hamming"):
        assert got["datasets"]["nsd"][key] == pytest.approx(sklearn_reference(probs, targets)[key], abs=1e-12)
    for sid, n in (("nsd/subj01", 30), ("nsd/subj02", 40), ("nsd/subj05", 20)):
        rows = np.array([i == sid for i in ids])
        ref = sklearn_reference(probs[rows], targets[rows])
        assert got["subjects"][sid]["n"] == n
        for key in ("mAP", "AUC", "hamming"):
            assert got["subjects"][sid][key] == pytest.approx(ref[key], abs=1e-12), (sid, key)
    mean = np.mean([got["subjects"][s]["mAP"] for s in got["subjects"]])
    assert got["datasets"]["nsd"]["subject_mean"]["mAP"] == pytest.approx(mean)
