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
from dataclasses import asdict, dataclass
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


# ------------------------------------------------------------------------------------------------
# Sign-flip permutation tests, the log-odds scale and power (what the gate decides with)

LOG_ODDS_CLIP = 1e-12
POWER = 0.8


def log_odds(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities (clipped to [1e-12, 1 - 1e-12]: |log-odds| <= 27.6).

    A shift on this scale is what a change of the prompt's logit produces: a saturated image
    (p = 0.99) whose logit moves by 0.5 barely moves in probability but moves fully here.
    """
    q = np.clip(np.asarray(p, dtype=float), LOG_ODDS_CLIP, 1.0 - LOG_ODDS_CLIP)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class SignFlip:
    """The sign-flip permutation test of one cell's paired shifts (see `sign_flip_test`).

    p_mean: of the mean probability shift; p_rank: of the signed-rank statistic of the log-odds
    shifts; p: the cell's gated p-value, of the larger of the two statistics, each standardised by
    its sign-flip spread (max-T: one permutation test, so no Bonferroni factor, and between
    min(p_mean, p_rank) and twice that); replicates: sign vectors used (2^n when exact);
    mc_error: Monte Carlo standard error of `p` (0 when exact).
    """

    p_mean: float
    p_rank: float
    p: float
    replicates: int
    exact: bool
    mc_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _signed_ranks(d: np.ndarray) -> tuple[np.ndarray, float]:
    """Ranks of |d| (average ties; exact zeros rank 0) and the observed signed-rank sum."""
    from scipy.stats import rankdata

    a = np.abs(d)
    nz = a > 1e-9
    ranks = np.zeros(len(d))
    if nz.any():
        ranks[nz] = rankdata(a[nz])
    return ranks, float(np.sum(np.sign(d) * ranks))


def _exceedances(
    stats: np.ndarray, observed: np.ndarray, n_sign: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, int]:
    """Count sign vectors s with |s . stats[j]| >= |observed[j]| for each statistic j, and (last
    entry) those whose largest standardised statistic max_j |s . stats[j]| / ||stats[j]|| reaches
    the observed one (the max-T combination of the J tests).

    stats: float [J, n]. rng None: all 2^n sign vectors (exact); else `n_sign` random ones.
    Returns (counts [J + 1], number of sign vectors).
    """
    j, n = stats.shape
    tol = 1e-9 * (1.0 + np.abs(stats).sum(1))
    target = np.abs(observed) - tol
    norms = np.maximum(np.sqrt((stats * stats).sum(1)), 1e-300)
    max_obs = float(np.max(np.abs(observed) / norms)) * (1 - 1e-9)
    total = 2**n if rng is None else n_sign
    counts = np.zeros(j + 1, dtype=np.int64)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, total, chunk):
        m = min(chunk, total - start)
        if rng is None:
            codes = np.arange(start, start + m, dtype=np.int64)[:, None]
            signs = ((codes >> np.arange(n)) & 1).astype(np.float64) * 2 - 1
        else:
            signs = rng.integers(0, 2, size=(m, n)).astype(np.float64) * 2 - 1
        proj = np.abs(signs @ stats.T)
        counts[:j] += (proj >= target).sum(0)
        counts[j] += int(np.sum((proj / norms).max(1) >= max_obs))
    return counts, total


def sign_flip_test(
    d: np.ndarray,
    d_logodds: np.ndarray,
    n_perm: int,
    seed: int,
    key: str,
    refine_below: float | None = None,
) -> SignFlip:
    """Sign-flip permutation tests of paired shifts: the mean (sensitive to large, dense shifts)
    and the signed ranks of the log-odds shifts (sensitive to sparse shifts and to saturated
    images, whose probabilities cannot move but whose log-odds can).

    Under "the framing is exchangeable with the reference" every paired difference is as likely
    negative as positive, so flipping signs gives the null distribution with no assumption on
    its shape. Exact (all 2^n sign vectors) when 2^n <= n_perm, else `n_perm` random sign
    vectors seeded by (seed, key), p = (1 + #exceed) / (1 + B). The two are combined by max-T
    (the larger standardised statistic, its own permutation distribution). When refine_below is
    given and the combined p is below it, 9 * n_perm more sign vectors are drawn, so that p-values near a
    decision boundary carry a Monte Carlo error of about a third.

    Args:
        d: float [n] probability shifts; d_logodds: float [n] log-odds shifts of the same images.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0 or not np.any(np.abs(d) > 1e-12) and not np.any(np.abs(d_logodds) > 1e-9):
        return SignFlip(1.0, 1.0, 1.0, 0, True, 0.0)
    ranks, t_rank = _signed_ranks(np.asarray(d_logodds, dtype=float))
    stats = np.stack([d, ranks])
    observed = np.array([d.sum(), t_rank])
    exact = 2**n <= n_perm if n < 62 else False
    if exact:
        counts, total = _exceedances(stats, observed, 0, None)
        p_each = counts / total
    else:
        rng = np.random.default_rng(_mix(seed, key))
        counts, total = _exceedances(stats, observed, n_perm, rng)
        p_each = (counts + 1) / (total + 1)
        if refine_below is not None and p_each[2] < refine_below:
            more, extra = _exceedances(stats, observed, 9 * n_perm, rng)
            counts, total = counts + more, total + extra
            p_each = (counts + 1) / (total + 1)
    p_max = float(p_each[2])
    mc = 0.0 if exact else math.sqrt(p_max * (1 - p_max) / total)
    return SignFlip(float(p_each[0]), float(p_each[1]), p_max, total, exact, mc)


def _mds_power(x: np.ndarray, level: float, threshold: float) -> float:
    """Share of rows of x (paired shifts, [S, n]) the gate would fail: the sign-flip mean test
    (normal approximation, z = sum x / sqrt(sum x^2)) at level / 2 and |mean| > threshold."""
    from scipy.special import ndtri

    z_crit = float(ndtri(1 - level / 4))
    s = x.sum(1)
    z = np.abs(s) / np.sqrt(np.maximum((x * x).sum(1), 1e-300))
    return float(np.mean((z > z_crit) & (np.abs(s / x.shape[1]) > threshold)))


def min_detectable_shift(
    d: np.ndarray,
    level: float,
    threshold: float = 0.0,
    power: float = POWER,
    n_sim: int = 400,
    seed: int = 0,
) -> float:
    """Smallest uniform shift of the mean target probability that the gate would catch in this
    cell with probability `power` (math.inf when none up to 1 can be).

    By simulation from the cell's own paired differences: resample the centred differences
    (fresh samples of images like these), add a shift delta to every image and count how often
    the sign-flip mean test is significant at `level` / 2 (the cell's share of a Bonferroni
    level: two tests per cell) *and* |mean| exceeds the magnitude `threshold`; bisect on delta.
    The same resamples are reused for every delta (common random numbers), so the answer is
    monotone and stable. A cell whose exact sign-flip test cannot reach the level at all
    (2 / 2^n >= level) gets math.inf. The mean test at level / 2 is conservative: the max-T
    combination (`sign_flip_test`) spends between level / 2 and level on it.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2 or (n < 62 and 2.0 / 2**n >= level):
        return math.inf
    rng = np.random.default_rng(_mix(seed, "mds"))
    base = (d - d.mean())[rng.integers(0, n, size=(n_sim, n))]
    if _mds_power(base + 1.0, level, threshold) < power:
        return math.inf
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if _mds_power(base + mid, level, threshold) >= power:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return float(hi)


def images_needed(
    d: np.ndarray, level: float, threshold: float, target: float, min_n: int
) -> int | None:
    """About how many images a cell like this one needs before its minimum detectable shift is
    `target` (normal approximation from the cell's spread; at least `min_n`); None when no cell
    size can (target <= threshold: the magnitude rule alone needs a larger true shift)."""
    from scipy.special import ndtri

    if target <= threshold:
        return None
    d = np.asarray(d, dtype=float)
    sd = float(d.std(ddof=1)) if len(d) >= 2 else 0.0
    # resolution of the exact test: 2 / 2^n < level
    need = max(min_n, int(math.ceil(math.log2(2.0 / level))) + 1)
    z_c, z_p = float(ndtri(1 - level / 4)), float(ndtri(POWER))
    se = min((target - threshold) / z_p, target / (z_c + z_p))
    # the sign-flip statistic's spread includes the shift itself: sum x^2 = n (sd^2 + shift^2)
    return max(need, int(math.ceil((sd * sd + target * target) / se**2)))
