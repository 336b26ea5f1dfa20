"""The paired statistics: hand-checked values and agreement with scipy / the evaluation module."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from domainclip.audit.analysis import ece_replicates
from domainclip.audit.stats import (
    bootstrap_p_value,
    cell_indices,
    holm,
    mean_shift_test,
    proportion_ci,
    wilcoxon_test,
)
from domainclip.evaluation.bootstrap import percentile_interval, stratified_indices
from domainclip.evaluation.calibration import reliability_bins


def test_holm_matches_hand_computation():
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []
    assert holm([0.2, 0.4]) == pytest.approx([0.4, 0.4])  # monotone in the sorted order
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


def test_mean_shift_of_identical_scores_is_exactly_zero():
    d = np.zeros(30)
    est, p, reps = mean_shift_test(d, stratified_indices(np.zeros(30, int), 300, 0))
    assert (est.value, est.low, est.high, p) == (0.0, 0.0, 0.0, 1.0)
    assert np.all(reps == 0)


def test_constant_shift_has_a_collapsed_interval_and_the_smallest_p():
    d = np.full(25, 0.07)
    est, p, _ = mean_shift_test(d, stratified_indices(np.zeros(25, int), 300, 0))
    assert est.value == pytest.approx(0.07) and est.low == pytest.approx(0.07)
    assert p == pytest.approx(1 / 301)


def test_bootstrap_t_interval_is_close_to_the_t_interval_and_p_agrees_with_it():
    rng = np.random.default_rng(0)
    d = rng.normal(0.02, 0.05, size=80)
    est, p, _ = mean_shift_test(d, stratified_indices(np.zeros(80, int), 4000, 1))
    t_ci = sps.ttest_1samp(d, 0).confidence_interval(0.95)
    assert est.low == pytest.approx(t_ci.low, abs=0.004)
    assert est.high == pytest.approx(t_ci.high, abs=0.004)
    assert p == pytest.approx(sps.ttest_1samp(d, 0).pvalue, abs=0.01)
    assert (p < 0.05) == (est.low > 0 or est.high < 0)


def test_bootstrap_t_coverage_is_nominal_for_small_skewed_cells():
    """True mean covered in ~95% of 300 simulated cells of 15 skewed differences."""
    rng = np.random.default_rng(7)
    covered = 0
    for i in range(300):
        d = rng.exponential(0.05, size=15) - 0.05  # true mean 0, skewed
        est, _, _ = mean_shift_test(d, stratified_indices(np.zeros(15, int), 400, i))
        covered += est.low <= 0.0 <= est.high
    assert 0.91 <= covered / 300 <= 0.985


def test_bootstrap_p_value_agrees_with_the_percentile_interval():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.01, 0.05):
        reps = rng.normal(shift, 0.02, size=2000)
        lo, hi = percentile_interval(reps, 0.95)
        assert (bootstrap_p_value(reps) < 0.05) == (lo > 0 or hi < 0)


def test_cell_indices_repeat_per_key_and_differ_between_keys():
    strata = np.zeros(20, int)
    a = cell_indices(strata, 50, 0, "alarming/all")
    assert np.array_equal(a, cell_indices(strata, 50, 0, "alarming/all"))
    assert not np.array_equal(a, cell_indices(strata, 50, 0, "hedged/all"))
    assert not np.array_equal(a, cell_indices(strata, 50, 1, "alarming/all"))


def test_wilcoxon_all_zero_and_single_nonzero_and_regular():
    assert wilcoxon_test(np.zeros(12)) == {
        "statistic": 0.0,
        "p": 1.0,
        "n_nonzero": 0,
        "note": "all differences are zero",
    }
    one = wilcoxon_test(np.r_[np.zeros(9), 0.3])
    assert one["p"] is None and "not testable" in one["note"]
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1, 40)
    assert wilcoxon_test(d)["p"] == pytest.approx(sps.wilcoxon(d).pvalue)


@pytest.mark.parametrize(("k", "n"), [(0, 50), (3, 40), (40, 40), (7, 13), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert proportion_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_vectorised_ece_equals_evaluation_ece_on_every_replicate():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.2, 1.0, 200)
    conf[:5] = [0.0, 1.0, 0.5, 1 / 15, 14 / 15]  # bin edges
    corr = (rng.uniform(size=200) < conf).astype(float)
    idx = stratified_indices(rng.integers(0, 3, 200), 60, 2)
    fast = ece_replicates(conf, corr, idx, 15)
    slow = [reliability_bins(conf[i], corr[i], 15, "width").ece() for i in idx]
    assert fast == pytest.approx(slow, abs=1e-12)


def test_nearly_constant_differences_fall_back_to_a_finite_percentile_interval():
    # Saturated probabilities: one image of 36 drops from 1 to 0, the others do not move.
    d = np.r_[-1.0, np.zeros(35)]
    est, p, reps = mean_shift_test(d, stratified_indices(np.zeros(36, int), 2000, 0))
    assert np.isfinite(est.low) and np.isfinite(est.high)
    assert est.low <= est.value <= est.high == 0.0
    assert p > 0.05  # one image in 36 is no evidence of a systematic shift
    assert p == pytest.approx(bootstrap_p_value(reps))
