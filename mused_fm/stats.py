"""Statistics of comparisons over seeds: means with 95% t-intervals, paired differences, sign-flip tests.

A figure that compares methods reports, per method, the mean over seeds with its interval and the per-seed
values; an effect is a paired difference (same seeds, same data) whose interval excludes zero.

    interval([0.41, 0.44, 0.39])                 -> Interval(mean 0.413, low 0.351, high 0.475, n 3)
    paired({0: 0.41, 1: 0.44}, {0: 0.30, 1: 0.35}) -> the interval of the per-seed differences
    sign_flip_p([0.11, 0.09, 0.05, 0.02, 0.07, 0.04])  -> 0.03125 (exact: all 2^6 sign patterns)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

__all__ = ["Interval", "interval", "paired", "sign_flip_p"]


@dataclass(frozen=True)
class Interval:
    """Mean of `values` with a two-sided `level` Student-t interval (NaN bounds for fewer than 2 values)."""

    mean: float
    low: float
    high: float
    values: tuple[float, ...]
    level: float = 0.95

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def above_zero(self) -> bool:
        """The interval lies above zero (a difference claimed as an effect); False when undefined."""
        return bool(self.low > 0)

    def text(self, digits: int = 3) -> str:
        """'0.413 [0.351, 0.475]' (or '0.413' for one value)."""
        if not math.isfinite(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "values": list(self.values)}


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-interval of independent values (seeds); NaN values are an error, not dropped silently."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("interval of no values.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"interval of non-finite values {x.tolist()}.")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, tuple(x.tolist()), level)
    half = float(student_t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, tuple(x.tolist()), level)


def paired(a: Mapping, b: Mapping, level: float = 0.95) -> Interval:
    """Interval of a[k] - b[k] over the keys (seeds) both have, in sorted key order."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"no shared seeds to pair: {sorted(a)} vs {sorted(b)}.")
    return interval([a[k] - b[k] for k in shared], level)


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) p-value of the mean difference being zero.

    Under the null each difference is as likely positive as negative: p is the share of the 2^n sign
    patterns whose |sum| is at least the observed |sum|. With n = 6 the smallest p is 2/64 = 0.031.
    """
    d = np.asarray(list(differences), dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign-flip test of no differences.")
    if d.size > 20:
        raise ValueError(f"exact sign-flip test enumerates 2^n patterns; n={d.size} is too many.")
    observed = abs(d.sum())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    return float(np.mean(np.abs(signs @ d) >= observed - 1e-12))
