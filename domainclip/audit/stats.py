"""Paired statistics for framing shifts: bootstrap-t test of the mean shift, Holm correction,
Wilcoxon, flip-rate intervals.

Resampling and percentile intervals come from `domainclip.evaluation.bootstrap`. What a *paired
comparison* adds lives here:

* `mean_shift_test`: the mean of paired differences with a symmetric studentized (bootstrap-t)
  interval and the p-value read off the same replicates, so "the 95% CI excludes 0" and
  "p < 0.05" are the same statement. Percentile intervals are too narrow in small cells (a
  simulation of 40-60 images per cell rejected a true null 5.7% of the time at nominal 5%); the
  bootstrap-t interval held 5.0%.
* Holm's step-down correction across the many cells the gate tests.
* a Wilcoxon signed-rank test that survives all-zero differences (scipy warns and returns NaN).
* the Wilson interval for flip rates (a bootstrap of 0 flips would claim [0, 0]).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from domainclip.evaluation.bootstrap import Estimate, percentile_interval, stratified_indices

CONFIDENCE = 0.95


def cell_indices(strata: np.ndarray, n_boot: int, seed: int, key: str) -> np.ndarray:
    """[n_boot, N] bootstrap indices for one analysis cell, reproducible from (seed, key).

    Seeding per cell key (instead of one running generator) makes a cell's replicates independent
    of which other cells exist, and gives two models audited on the same images the *same*
    replicates, so their shifts can be compared pairwise (`--compare`).
    """
    return stratified_indices(strata, n_boot, seed=_mix(seed, key))


def _mix(seed: int, key: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63)


def bootstrap_p_value(replicates: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of H0: statistic == `null`, from percentile-bootstrap replicates.

    p = 2 * min(#(rep <= null) + 1, #(rep >= null) + 1) / (B + 1), capped at 1. The +1 keeps p > 0
    (a finite bootstrap cannot prove p = 0), and p < a exactly when `null` lies outside the
    (1 - a) percentile interval, up to that +1.
    """
    reps = np.asarray(replicates, dtype=float)
    b = len(reps)
    if b == 0:
        return 1.0
    below = int(np.sum(reps <= null)) + 1
    above = int(np.sum(reps >= null)) + 1
    return float(min(1.0, 2.0 * min(below, above) / (b + 1)))


def mean_shift_test(
    d: np.ndarray, idx: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[Estimate, float, np.ndarray]:
    """Mean of paired differences with a symmetric bootstrap-t interval and two-sided p-value.

    Args:
        d: float [n] paired differences (framing minus reference), n >= 2.
        idx: int [B, n] bootstrap resample indices into `d`.

    Returns:
        (Estimate of the mean with its interval, p-value of H0: mean = 0, bootstrap means [B]).
        Interval: mean -/+ c * se with se = sd(d) / sqrt(n) and c the `confidence` quantile of
        |t*| = |mean* - mean| / se* over the replicates; p = (#{|t*| >= |mean / se|} + 1) / (B + 1).
        Differences that are all equal have se = 0: the interval collapses to the value and
        p = 1 when that value is 0 (nothing changed), else the smallest attainable p. When over
        `1 - confidence` of the replicates have se* = 0 (nearly constant differences) the pivot is
        undefined and the percentile interval and its p-value are returned instead.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean())
    boot = d[idx]
    sums = boot.sum(1)
    means = sums / n
    se = float(d.std(ddof=1) / np.sqrt(n))
    b = len(means)
    if se <= 1e-15:
        p = 1.0 if abs(mean) <= 1e-12 else 1.0 / (b + 1)
        return Estimate(mean, mean, mean), p, means
    # Replicate variances from sums of squares: one pass over [B, n] instead of numpy's two.
    var_star = np.maximum(np.einsum("ij,ij->i", boot, boot) - sums * means, 0.0) / (n - 1)
    se_star = np.sqrt(var_star / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = np.abs(means - mean) / se_star
    # A replicate drawing one value n times has se* = 0 and mean* = that value: |t*| is infinite
    # unless it equals the mean. Such replicates only widen the interval (the safe side).
    t_star = np.where(se_star > 0, t_star, np.where(np.abs(means - mean) > 0, np.inf, 0.0))
    # "higher": no interpolation between replicates (conservative, and inf - inf never arises).
    c = float(np.quantile(t_star, confidence, method="higher"))
    if not np.isfinite(c):
        # Nearly constant differences (e.g. saturated probabilities: one image moved, the rest
        # exactly 0): so many replicates have se* = 0 that the pivot is undefined. The percentile
        # interval still says something true, so it stands in (the cell records which was used).
        lo, hi = percentile_interval(means, confidence)
        return Estimate(mean, lo, hi), bootstrap_p_value(means), means
    t_obs = abs(mean) / se
    p = float(min(1.0, (np.sum(t_star >= t_obs) + 1) / (b + 1)))
    return Estimate(mean, mean - c * se, mean + c * se), p, means


def estimate(value: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Point value plus percentile interval of `replicates`."""
    lo, hi = percentile_interval(np.asarray(replicates, dtype=float), confidence)
    return Estimate(float(value), lo, hi)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control, any dependence between tests).

    Reject test i at level alpha when adjusted[i] < alpha. Returns values in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def wilcoxon_test(diffs: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of paired differences (scipy), robust to degenerate inputs.

    Returns {"statistic", "p", "n_nonzero", "note"}. All-zero differences (the wording changed
    nothing) give p = 1 with a note instead of scipy's warning and NaN statistics.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=float)
    # Differences below float noise are zeros: an identical prompt can give 1e-9 wobble.
    d = np.where(np.abs(d) < 1e-9, 0.0, d)
    nz = int(np.count_nonzero(d))
    if nz == 0:
        return {"statistic": 0.0, "p": 1.0, "n_nonzero": 0, "note": "all differences are zero"}
    if nz < 2:
        return {
            "statistic": None,
            "p": None,
            "n_nonzero": nz,
            "note": "fewer than 2 non-zero differences: not testable",
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = wilcoxon(d, zero_method="wilcox")
    p = float(res.pvalue)
    return {
        "statistic": float(res.statistic),
        "p": p if math.isfinite(p) else None,
        "n_nonzero": nz,
        "note": None,
    }


def proportion_ci(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; (0, 1) when n == 0.

    Written out rather than via scipy's `binomtest(...).proportion_ci`, which also computes an
    exact p-value and costs milliseconds per call (the audit needs hundreds of these).
    """
    from scipy.special import ndtri

    if n == 0:
        return 0.0, 1.0
    z = float(ndtri(0.5 + confidence / 2))
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
