"""Stratified percentile bootstrap for confidence intervals on evaluation metrics.

Images are resampled with replacement *within strata* (the image's label set), so every replicate
has the same number of images per class (per label combination, multi-label). That keeps
one-vs-rest AUROC defined in every replicate and mirrors how the test set was drawn (fixed class
counts). All metrics are computed on the same replicates, so their intervals are consistent.

The interval is the percentile interval of the replicate values. scipy.stats.bootstrap offers BCa,
but it cannot stratify and its jackknife costs N metric evaluations per statistic, which is why it
is not used here.

Calibration errors (ECE, equal-mass ECE, MCE) are biased upward under resampling: a replicate
repeats some images and lacks others, which adds noise to every bin, and |gap| turns noise into
error. Their replicates then sit above the point estimate, and the percentile interval can exclude
it (ECE 0.071 [0.082, 0.156]). For these metrics `bootstrap_metrics(..., recentre=...)` uses the
bias-recentred percentile interval: the replicates minus their mean bias (mean(replicates) -
value), so the interval has the bootstrap's spread around the point estimate
(`recentred_interval`). BC/BCa percentile intervals do not fix this: when fewer than 2.5% of the
replicates fall below the point estimate, the BC interval excludes it too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_N_BOOT = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval, or an undefined value with the reason.

    value: the metric on the full data (None when undefined).
    low, high: interval bounds (None when undefined or no bootstrap was run).
    reason: why the value is undefined (None when defined).
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None

    @classmethod
    def undefined(cls, reason: str) -> Estimate:
        return cls(None, None, None, reason)

    def to_dict(self) -> dict[str, Any]:
        """{"value": v, "ci95": [low, high] | None} plus "reason" when undefined."""
        d: dict[str, Any] = {
            "value": self.value,
            "ci95": None if self.low is None else [self.low, self.high],
        }
        if self.reason is not None:
            d["reason"] = self.reason
        return d

    def fmt(self, digits: int = 3) -> str:
        """'0.912 [0.871, 0.945]' or 'undefined (reason)'."""
        if self.value is None:
            return f"undefined ({self.reason})"
        if self.low is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def strata_of(labels: Sequence[Sequence[str]] | Sequence[Hashable]) -> np.ndarray:
    """Stratum id per item: items with the same label (set) share a stratum. Returns int [N]."""
    keys = [tuple(sorted(lab)) if isinstance(lab, (list, tuple)) else lab for lab in labels]
    ids: dict[Hashable, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def stratified_indices(strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, N] resample indices: within each stratum, draw its size with replacement."""
    rng = np.random.default_rng(seed)
    n = len(strata)
    out = np.empty((n_boot, n), dtype=np.int64)
    pos = 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        out[:, pos : pos + len(members)] = members[
            rng.integers(0, len(members), size=(n_boot, len(members)))
        ]
        pos += len(members)
    return out


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicate values."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def recentred_interval(
    value: float, values: np.ndarray, confidence: float
) -> tuple[float, float]:
    """Percentile interval of the replicates shifted by their bias (mean - value): the spread of the
    bootstrap around the point estimate, for statistics whose replicates are biased (ECE)."""
    values = np.asarray(values, dtype=float)
    bias = float(np.mean(values)) - float(value)
    lo, hi = percentile_interval(values - bias, confidence)
    if values.min() >= 0 and value >= 0:  # a non-negative statistic (ECE) keeps a bound >= 0
        lo = max(lo, 0.0)
    return min(lo, float(value)), max(hi, float(value))


def bootstrap_metrics(
    stat: Callable[[np.ndarray], Mapping[str, float | None]],
    strata: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    reasons: Mapping[str, str] | None = None,
    recentre: Sequence[str] = (),
) -> dict[str, Estimate]:
    """Point estimates and stratified-bootstrap intervals for every metric `stat` returns.

    Args:
        stat: idx [M] (indices into the data, possibly repeated) -> {metric: value or None}.
            Called once with all indices (point estimates) and once per replicate.
        strata: int [N] stratum per item (see `strata_of`).
        n_boot: replicates (0 = point estimates only).
        reasons: metric -> why it is undefined, used when the point estimate is None.
        recentre: metrics that get the bias-recentred interval (`recentred_interval`; ECE).

    Returns:
        metric -> Estimate. A metric undefined in some replicates gets its interval from the others
        (rare with stratification; counted in the log of the caller if it matters).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(strata)
    point = stat(np.arange(n))
    reps: dict[str, list[float]] = {k: [] for k in point}
    if n_boot > 0:
        for idx in stratified_indices(strata, n_boot, seed):
            for k, v in stat(idx).items():
                if v is not None and k in reps and np.isfinite(v):
                    reps[k].append(float(v))
    out = {}
    for k, v in point.items():
        if v is None:
            out[k] = Estimate.undefined((reasons or {}).get(k, "undefined on this data"))
        elif len(reps[k]) >= max(2, n_boot // 2):
            if k in recentre:
                lo, hi = recentred_interval(float(v), np.asarray(reps[k]), confidence)
            else:
                lo, hi = percentile_interval(np.asarray(reps[k]), confidence)
            out[k] = Estimate(float(v), lo, hi)
        else:
            out[k] = Estimate(float(v))
    return out
