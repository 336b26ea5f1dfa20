"""Conformal prediction sets checked against hand computations on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domainclip.calibrators import CalibrationError
from domainclip.calibrators.conformal import (
    ConformalThresholds,
    class_scores,
    conformal_quantile,
    crc_fnr_threshold,
    fit_conformal,
)

# 5 calibration images, 3 classes.
P = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.50, 0.30, 0.20],
        [0.10, 0.60, 0.30],
        [0.20, 0.30, 0.50],
        [0.40, 0.35, 0.25],
    ]
)
Y = np.array([0, 1, 1, 0, 2])


def test_scores_by_hand():
    # LAC: 1 - p_c.  APS: mass of the classes ranked at or above c, minus 1 (= minus the mass ranked
    # below c).  RAPS: + lam * max(0, rank - k).
    assert class_scores(P[:1], "lac") == pytest.approx(np.array([[0.3, 0.8, 0.9]]))
    assert class_scores(P[3:4], "aps") == pytest.approx(np.array([[1.0, 0.8, 0.5]]) - 1)
    assert class_scores(P[3:4], "raps", lam=0.1, k_reg=1) == pytest.approx(np.array([[1.2, 0.9, 0.5]]) - 1)


def test_aps_keeps_classes_apart_when_the_model_is_confident():
    """Mass at or above the 2nd class of a saturated softmax rounds to 1.0 in float64; the tail
    mass does not, so the sets stay small where every class used to tie with the true one."""
    z = np.array([[40.0, 0.0, -5.0, -9.0]] * 20 + [[0.0, 40.0, -5.0, -9.0]] * 20)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.array([0] * 20 + [1] * 20)
    assert np.cumsum(np.sort(probs[0])[::-1])[1] == 1.0  # the old score of class 2: a tie
    t = fit_conformal(probs, y, 0.1, "aps")
    assert t.predict_sets(probs).sum(1).tolist() == [1] * 40


def test_aps_thresholds_stored_on_the_old_scale_are_read_as_before():
    t = fit_conformal(P, Y, 0.6, "aps")
    old = {k: v for k, v in t.to_dict().items() if k != "score"}
    old["threshold"] = t.threshold + 1.0  # records written before the tail score
    back = ConformalThresholds.from_dict(old)
    assert back.threshold == pytest.approx(t.threshold)
    assert back.predict_sets(P).tolist() == t.predict_sets(P).tolist()
    assert ConformalThresholds.from_dict(t.to_dict()).threshold == t.threshold


def test_quantile_is_the_ceil_n_plus_1_rank():
    s = np.array([0.5, 0.1, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6])  # n = 9
    assert conformal_quantile(s, 0.2) == 0.8  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(s, 0.5) == 0.5  # ceil(10 * 0.5) = 5th
    assert conformal_quantile(s, 0.05) == math.inf  # ceil(10 * 0.95) = 10 > n


def test_lac_sets_by_hand():
    # true-class LAC scores: 0.3, 0.7, 0.4, 0.8, 0.75; alpha 0.4: ceil(6 * 0.6) = 4th smallest = 0.75
    t = fit_conformal(P, Y, 0.4, "lac")
    assert t.threshold == pytest.approx(0.75)
    sets = t.predict_sets(P)  # classes with p >= 0.25
    assert sets.tolist() == [
        [True, False, False],
        [True, True, False],
        [False, True, True],
        [False, True, True],
        [True, True, True],
    ]


def test_aps_sets_by_hand():
    # true-class APS scores: 0.7, 0.8, 0.6, 1.0, 1.0; alpha 0.6 -> ceil(6 * 0.4) = 3rd smallest = 0.8.
    # A class is in when the mass of the classes ranked at or above it is <= 0.8:
    # [.7,.2,.1] cum .7, .9 -> {0}; [.5,.3,.2] .5, .8 -> {0, 1}; [.1,.6,.3] .6, .9 -> {1};
    # [.2,.3,.5] .5, .8 -> {2, 1}; [.4,.35,.25] .4, .75, 1.0 -> {0, 1}
    t = fit_conformal(P, Y, 0.6, "aps")
    assert t.threshold == pytest.approx(0.8 - 1)
    assert t.predict_sets(P).tolist() == [
        [True, False, False],
        [True, True, False],
        [False, True, False],
        [False, True, True],
        [True, True, False],
    ]


def test_mondrian_thresholds_per_class_by_hand():
    # LAC true scores by class: class 0: [0.3, 0.8]; class 1: [0.7, 0.4]; class 2: [0.75]
    t = fit_conformal(P, Y, 0.34, "lac", mondrian=True)
    # n = 2: ceil(3 * 0.66) = 2nd smallest; n = 1: ceil(2 * 0.66) = 2 > 1 -> inf (always in)
    assert t.per_class == pytest.approx([0.8, 0.7, math.inf])
    assert t.n_per_class == [2, 2, 1]
    sets = t.predict_sets(P)
    assert sets[:, 2].all()
    assert sets[:, 0].tolist() == (1 - P[:, 0] <= 0.8).tolist()


def test_crc_fnr_threshold_by_hand():
    pos = np.array([0.9, 0.2, 0.6, 0.4, 0.8, 0.7, 0.3, 0.5, 0.95])  # n = 9 positives
    # (misses + 1) / 10 <= 0.25 -> misses <= 1.5 -> at most 1 positive below lambda: lambda = 0.3
    assert crc_fnr_threshold(pos, 0.25) == pytest.approx(0.3)
    assert crc_fnr_threshold(pos, 0.05) == 0.0  # (0 + 1) / 10 > 0.05: flag everything
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7], [0.4, 0.1]])
    labels = np.array([[1, 0], [1, 1], [1, 1], [0, 1]])
    t = fit_conformal(probs, labels, 0.5, multi_label=True)
    # finding 0 positives [.9, .2, .6]: misses <= 1 -> lambda .6; finding 1 [.8, .7, .1] -> .7
    assert t.per_class == pytest.approx([0.6, 0.7]) and t.n_per_class == [3, 3]
    assert t.predict_sets(probs).tolist() == [[True, False], [False, True], [True, True], [False, False]]


def test_rare_findings_share_one_threshold_over_their_pooled_positives():
    """At alpha 0.1 a finding needs 9 positives for a threshold above 0: finding 0 (12 positives)
    gets its own; findings 1 and 2 (5 each) pool their 10; finding 3 (no positive) stays at 0."""
    rng = np.random.default_rng(0)
    n = 40
    labels = np.zeros((n, 4), dtype=int)
    labels[:12, 0] = 1
    labels[12:17, 1] = 1
    labels[17:22, 2] = 1
    probs = rng.uniform(0.05, 0.95, (n, 4))
    t = fit_conformal(probs, labels, 0.1, multi_label=True)
    pooled = np.concatenate([probs[12:17, 1], probs[17:22, 2]])
    # 10 pooled positives: (misses + 1) / 11 <= 0.1 -> no miss allowed -> lambda = their minimum
    assert t.pooled == [1, 2] and t.per_class[1] == t.per_class[2] == pytest.approx(pooled.min())
    assert t.per_class[0] == pytest.approx(crc_fnr_threshold(probs[:12, 0], 0.1)) and t.per_class[3] == 0.0
    alone = [crc_fnr_threshold(probs[12:17, 1], 0.1), crc_fnr_threshold(probs[17:22, 2], 0.1)]
    assert alone == [0.0, 0.0]  # on their own: flagged on every image
    assert ConformalThresholds.from_dict(t.to_dict()).pooled == [1, 2]
    few = fit_conformal(probs[:15], labels[:15], 0.1, multi_label=True)  # pool of 3: still too few
    assert few.per_class[1] == 0.0 and few.per_class[2] == 0.0


def test_thresholds_round_trip_with_infinite_values():
    t = fit_conformal(P, Y, 0.34, "raps", mondrian=True, lam=0.05, k_reg=2, split="calib")
    d = t.to_dict()
    assert d["per_class"][2] is None and d["split"] == "calib" and d["k_reg"] == 2
    assert ConformalThresholds.from_dict(d) == t


def test_bad_alpha_and_method():
    with pytest.raises(CalibrationError, match="alpha"):
        fit_conformal(P, Y, 1.5)
    with pytest.raises(CalibrationError, match="lac, aps, raps"):
        fit_conformal(P, Y, 0.1, "naive")


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_marginal_coverage_on_exchangeable_data(method):
    """Average over 200 random calibration/test splits: coverage within 1.5 points of 0.9."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    cov = []
    for _ in range(200):
        perm = rng.permutation(len(y))
        cal, test = perm[:1000], perm[1000:]
        t = fit_conformal(p[cal], y[cal], 0.1, method)
        cov.append(t.predict_sets(p[test])[np.arange(len(test)), y[test]].mean())
    assert abs(np.mean(cov) - 0.9) < 0.015
