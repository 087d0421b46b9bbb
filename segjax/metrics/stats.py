"""Small statistics for seeded ablations: mean ± std, Student-t confidence intervals, paired tests.

With a handful of seeds a normal-approximation interval is too narrow; these use Student's t with
n - 1 degrees of freedom. Paired differences (same seed, two settings) remove the seed-to-seed
variation the settings share, which is why ablations should compare cells seed by seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and a two-sided CI of the mean of `n` values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def ci_half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of `values` with a Student-t interval; std and CI are NaN when n < 2.

    >>> summarize([0.70, 0.72, 0.74]).mean
    0.72
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """`treatment - baseline` over paired seeds: its summary and the paired t-test p-value."""

    summary: Summary
    p_value: float


def paired_difference(treatment: Sequence[float], baseline: Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
    """Paired difference of two equally long sequences whose i-th entries share a seed."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if t.shape != b.shape:
        raise ValueError(f"paired sequences must have the same length, got {t.shape} and {b.shape}")
    d = t - b
    summary = summarize(d, confidence)
    if d.size < 2:
        p = math.nan
    elif np.all(d == d[0]):  # zero variance: the t statistic is undefined
        p = 1.0 if d[0] == 0 else 0.0
    else:
        p = float(scipy_stats.ttest_rel(t, b).pvalue)
    return PairedDifference(summary, p)
