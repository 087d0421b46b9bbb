"""segjax.metrics.stats against hand-computed values (t quantiles from tables, not from scipy)."""

import math

import numpy as np
import pytest

from segjax.metrics import stats

T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}  # Student t tables


def test_summary_matches_hand_computation(np_rng):
    for n in (2, 3, 4, 5):
        x = np_rng.normal(0.7, 0.05, size=n)
        mean = sum(x) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
        half = T975[n - 1] * std / math.sqrt(n)
        s = stats.summarize(x)
        assert s.n == n
        assert s.mean == pytest.approx(mean, rel=1e-12)
        assert s.std == pytest.approx(std, rel=1e-12)
        assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-8)


def test_single_value_has_no_spread():
    s = stats.summarize([0.5])
    assert s.mean == 0.5 and math.isnan(s.std) and math.isnan(s.ci_low)


def test_paired_difference_removes_shared_seed_noise():
    seed_effect = np.array([0.10, -0.20, 0.05, 0.30])
    base = 0.6 + seed_effect
    treat = base + np.array([0.011, 0.009, 0.010, 0.010])
    d = stats.paired_difference(treat, base)
    # Unpaired, the seed effect swamps a 0.01 gain; paired, the CI excludes zero.
    assert d.summary.mean == pytest.approx(0.010)
    assert d.summary.ci_low > 0
    diffs = treat - base
    t = diffs.mean() / (diffs.std(ddof=1) / 2)
    assert t > T975[3]  # so p < 0.05
    assert d.p_value < 0.05
    unpaired = stats.summarize(treat)
    assert unpaired.ci_low < stats.summarize(base).mean  # overlapping: paired is the right test


def test_identical_runs_give_p_one_and_constant_shift_p_zero():
    assert stats.paired_difference([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert stats.paired_difference([1.5, 2.5], [1.0, 2.0]).p_value == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError, match="1-D"):
        stats.summarize(bad)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_difference([1.0, 2.0], [1.0])
