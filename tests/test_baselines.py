"""The ridge, linear and chance baselines against independent references (scikit-learn's Ridge, LogisticRegression
and metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import average_precision_score, roc_auc_score

from mused_fm.baselines import (
    ALPHAS,
    SplitArrays,
    chance_metrics,
    fit_linear,
    fit_ridge,
    linear_metrics,
    ridge_metrics,
)
from mused_fm.data.pipeline import DatasetStream
from mused_fm.metrics import multilabel_metrics

from train_helpers import pack_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return pack_cohort(tmp_path_factory.mktemp("baselines"))


@pytest.mark.parametrize("shape", [(30, 80), (60, 12)])  # dual form with P > N and with P < N
def test_fit_ridge_matches_sklearn(shape):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=shape), (rng.random((shape[0], 4)) < 0.3).astype(float)
    x_new = rng.normal(size=(7, shape[1]))
    alpha = 0.3
    xc = x - x.mean(0)
    lam = alpha * float(np.mean(np.sum(xc * xc, axis=1)))
    expected = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(x, y).predict(x_new)
    np.testing.assert_allclose(fit_ridge(x, y, alpha)(x_new), expected, rtol=1e-7, atol=1e-9)


def _stream(url, subjects=None):
    return DatasetStream.open(str(url), {}, subjects)


def test_ridge_metrics_select_alpha_on_validation_and_score_test(cohort):
    stream = _stream(cohort["nsd"], ["subj01", "subj02"])
    stream.rows = {s: i for i, s in enumerate(stream.subjects)}
    result = ridge_metrics(stream)
    assert set(result["subjects"]) == {"nsd/subj01", "nsd/subj02"}
    for subject, name in (("nsd/subj01", "subj01"), ("nsd/subj02", "subj02")):
        one = DatasetStream(stream.manifest, stream.rows, [name])
        train, val, test = (SplitArrays.read(one, s) for s in ("train", "val", "test"))
        val_maps = {a: multilabel_metrics(fit_ridge(train.x, train.y, a)(val.x), val.y)["mAP"] for a in ALPHAS}
        assert result["ridge"][subject]["val_mAP"] == pytest.approx(max(val_maps.values()))
        scores = fit_ridge(train.x, train.y, result["ridge"][subject]["alpha"])(test.x)
        present = test.y.sum(0) > 0
        expected = average_precision_score(test.y[:, present], scores[:, present], average="macro")
        assert result["subjects"][subject]["mAP"] == pytest.approx(expected)
        assert result["subjects"][subject]["n"] == len(test.y)
    assert result["repeat_mean"]["datasets"]["nsd"]["n"] <= result["datasets"]["nsd"]["n"]


def test_fit_linear_reaches_sklearn_logistic_regression():
    """On a planted linear multi-label problem the AdamW readout ranks test samples as well as scikit-learn's
    logistic regression (per-class AUC within 0.03), and far better than its untrained start."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 5))

    def draw(n):
        x = rng.normal(size=(n, 40)) * rng.uniform(0.5, 3.0, 40)  # unequal feature scales: standardising matters
        return x, ((x / 2) @ w + rng.normal(0, 3.0, (n, 5)) > 2.0).astype(np.float32)

    (x, y), (xv, yv), (xt, yt) = draw(1500), draw(300), draw(1000)
    predict, chosen = fit_linear(x, y, [SplitArrays(xv, yv, [])], steps=800)
    ours = [roc_auc_score(yt[:, c], predict(xt)[:, c]) for c in range(5)]
    ref = [
        roc_auc_score(yt[:, c], LogisticRegression(max_iter=2000).fit(x, y[:, c]).decision_function(xt))
        for c in range(5)
    ]
    np.testing.assert_allclose(ours, ref, atol=0.03)
    assert min(ref) > 0.75 and chosen["best_step"] > 0 and 0 < chosen["val_mAP"] <= 1


def test_linear_metrics_share_one_readout_over_the_union_of_masks(cohort):
    stream = _stream(cohort["hcp"])  # volumes: each subject has its own mask
    stream.rows = {s: i for i, s in enumerate(stream.subjects)}
    result = linear_metrics(stream, steps=200)
    assert set(result["subjects"]) == set(stream.subjects)
    assert result["linear"]["best_step"] % 100 == 0 and result["linear"]["steps"] == 200
    for subject in stream.subjects:
        n_test = len(SplitArrays.read(DatasetStream(stream.manifest, stream.rows, [subject.split("/")[1]]), "test").y)
        assert result["subjects"][subject]["n"] == n_test
    chance = chance_metrics(stream)["datasets"]["hcp"]["subject_mean"]["mAP"]
    assert result["datasets"]["hcp"]["subject_mean"]["mAP"] > chance + 0.1  # the test preset: a third of the noise


def test_chance_matches_random_scores_scored_by_sklearn(cohort):
    stream = _stream(cohort["hcp"])
    stream.rows = {s: i for i, s in enumerate(stream.subjects)}
    result = chance_metrics(stream, draws=30)
    tests = [
        SplitArrays.read(DatasetStream(stream.manifest, stream.rows, [s.split("/")[1]]), "test")
        for s in stream.subjects
    ]
    labels = np.concatenate([t.y for t in tests])
    present = labels.sum(0) > 0
    rng = np.random.default_rng(123)  # an independent estimate of E[AP] of random scores (it exceeds the prevalence)
    expected = np.mean(
        [average_precision_score(labels[:, present], rng.random(labels[:, present].shape)) for _ in range(300)]
    )
    assert result["datasets"]["hcp"]["AUC"] == pytest.approx(0.5, abs=0.03)
    assert result["datasets"]["hcp"]["mAP"] == pytest.approx(expected, abs=0.02)
