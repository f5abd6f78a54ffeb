"""Seed statistics against independent references (scipy's t interval, a hand-rolled permutation count)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from mused_fm.metrics import grouped_metrics, stimulus_means
from mused_fm.stats import interval, paired, sign_flip_p


def test_interval_matches_scipy_t_interval():
    values = [0.41, 0.44, 0.39, 0.47, 0.40, 0.43]
    got = interval(values)
    low, high = sps.t.interval(0.95, df=5, loc=np.mean(values), scale=sps.sem(values))
    assert got.mean == pytest.approx(np.mean(values))
    assert (got.low, got.high) == pytest.approx((low, high))
    assert got.n == 6 and got.values == tuple(values)
    assert got.text() == f"{np.mean(values):.3f} [{low:.3f}, {high:.3f}]"


def test_interval_of_one_value_has_no_bounds_and_nan_is_refused():
    one = interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and not one.above_zero and one.text() == "0.500"
    with pytest.raises(ValueError, match="non-finite"):
        interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        interval([])


def test_paired_differences_use_shared_seeds_only():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}
    b = {0: 0.4, 1: 0.4, 2: 0.6}
    got = paired(a, b)
    assert got.values == pytest.approx((0.1, 0.2, 0.1))
    assert got.above_zero == (got.low > 0)
    with pytest.raises(ValueError, match="no shared seeds"):
        paired({0: 1.0}, {1: 1.0})


def _brute_sign_flip(d):
    observed = abs(sum(d))
    hits = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    ]
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "d", [[0.11, 0.09, 0.05, 0.02, 0.07, 0.04], [0.1, -0.2, 0.05, 0.3, -0.01, 0.02, 0.04], [0.0, 0.0]]
)
def test_sign_flip_matches_enumeration(d):
    assert sign_flip_p(d) == pytest.approx(_brute_sign_flip(d))


def test_sign_flip_all_positive_six_seeds_is_two_over_64():
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)


def test_stimulus_means_average_repeats_within_subjects():
    rng = np.random.default_rng(0)
    subjects = ["nsd/s1", "nsd/s1", "nsd/s2", "nsd/s1", "nsd/s2", "nsd/s2"]
    stimuli = ["a", "b", "a", "a", "a", "c"]
    labels = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [1, 0], [0, 1]])
    probs = rng.random((6, 2))
    mean_probs, mean_labels, ids = stimulus_means(probs, labels, subjects, stimuli)
    assert ids == ["nsd/s1", "nsd/s1", "nsd/s2", "nsd/s2"]
    expected = [probs[[0, 3]].mean(0), probs[1], probs[[2, 4]].mean(0), probs[5]]
    np.testing.assert_allclose(mean_probs, np.stack(expected))
    np.testing.assert_array_equal(mean_labels, labels[[0, 1, 2, 5]])
    assert grouped_metrics(mean_probs, mean_labels, ids)["datasets"]["nsd"]["n"] == 4
