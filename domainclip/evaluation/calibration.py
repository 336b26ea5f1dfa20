"""Calibration metrics: ECE (equal-width / equal-mass bins), MCE, Brier score, NLL, reliability plots.

Which probability is judged:
* single-label: the top-1 confidence max_c p[n, c] against whether the top-1 class is right
  (as torchmetrics' multiclass `CalibrationError`);
* multi-label: every (image, finding) probability p[n, c] against whether the finding is present
  (binary calibration of each score, as torchmetrics' binary `CalibrationError`).

Binning: equal-width bins split [0, 1] into `n_bins` intervals [b_i, b_{i+1}) (the last one closed);
equal-mass bins sort the confidences and cut them into `n_bins` runs of (nearly) equal count
(`np.array_split` sizes: the first N % n_bins bins hold one more). ECE = sum_b (n_b / N) |acc_b - conf_b|,
MCE = max_b |acc_b - conf_b| over non-empty bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domainclip.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Estimate,
    bootstrap_metrics,
    strata_of,
)

STRATEGIES = ("width", "mass")
# Metrics whose bootstrap replicates are biased upward: bias-recentred intervals (see bootstrap.py).
RECENTRED = ("ece", "ece_mass", "mce")
_EPS = 1e-12  # probabilities are clipped to [eps, 1] in NLL so a confident miss costs ~27.6 nats, not inf


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics. Arrays have shape [n_bins]; empty bins have count 0 and NaN means.

    lower, upper: bin range (equal-width: the fixed edges; equal-mass: min/max confidence in the bin).
    """

    strategy: str
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float:
        used = self.count > 0
        gap = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(gap * self.count[used]) / self.n)

    def mce(self) -> float:
        used = self.count > 0
        return float(np.max(np.abs(self.accuracy[used] - self.confidence[used])))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReliabilityBins:
        """Inverse of `to_dict` (None -> NaN)."""

        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in d[key]], dtype=float)

        return cls(
            d["strategy"],
            arr("lower"),
            arr("upper"),
            np.asarray(d["count"], dtype=np.int64),
            arr("confidence"),
            arr("accuracy"),
        )

    def to_dict(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "strategy": self.strategy,
            "lower": clean(self.lower),
            "upper": clean(self.upper),
            "count": [int(c) for c in self.count],
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
        }


def confidence_and_correct(
    probs: np.ndarray, labels: np.ndarray, multi_label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """What calibration judges (see module doc).

    Args:
        probs: [N, C] class probabilities (single-label) or per-finding probabilities (multi-label).
        labels: int [N] class indices (single-label) or {0,1} [N, C] (multi-label).

    Returns:
        confidence float [M], correct float [M] in {0, 1}; M = N (single) or N*C (multi).
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if multi_label:
        if labels.shape != probs.shape:
            raise ValueError(f"multi-label probs {probs.shape} and labels {labels.shape} differ")
        return probs.reshape(-1), labels.reshape(-1).astype(float)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    return probs.max(1), (probs.argmax(1) == labels).astype(float)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, strategy: str = "width"
) -> ReliabilityBins:
    """Bin confidences (float [M] in [0, 1]) with their correctness (float [M] in {0, 1})."""
    if strategy not in STRATEGIES:
        raise ValueError(f"binning strategy must be one of {STRATEGIES}, got {strategy!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=float)
    if conf.size == 0:
        raise ValueError("calibration needs at least one prediction")
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
        lower, upper = edges[:-1], edges[1:]
    else:
        order = np.argsort(conf, kind="mergesort")
        idx = np.empty(len(conf), dtype=np.int64)
        for b, members in enumerate(np.array_split(order, n_bins)):
            idx[members] = b
        lower = np.array(
            [conf[idx == b].min() if np.any(idx == b) else np.nan for b in range(n_bins)]
        )
        upper = np.array(
            [conf[idx == b].max() if np.any(idx == b) else np.nan for b in range(n_bins)]
        )
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=corr, minlength=n_bins) / count
    return ReliabilityBins(strategy, lower, upper, count.astype(np.int64), mean_conf, mean_acc)


def expected_calibration_error(
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    strategy: str = "width",
    multi_label: bool = False,
) -> float:
    """ECE (L1). probs/labels as in `confidence_and_correct`; bins as in `reliability_bins`."""
    return _bins(probs, labels, n_bins, strategy, multi_label).ece()


def max_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, **options: Any
) -> float:
    """MCE: the largest |accuracy - confidence| over non-empty bins. options: `strategy` and
    `multi_label`, as in `expected_calibration_error`."""
    return _bins(probs, labels, n_bins, **options).mce()


def _bins(
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int,
    strategy: str = "width",
    multi_label: bool = False,
) -> ReliabilityBins:
    return reliability_bins(*confidence_and_correct(probs, labels, multi_label), n_bins, strategy)


def brier_score(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
    """Single-label: mean over images of sum_c (p_c - 1[y = c])^2 (in [0, 2]).
    Multi-label: mean over (image, finding) of (p - y)^2 (in [0, 1])."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if multi_label:
        return float(np.mean((probs - labels.astype(float)) ** 2))
    onehot = labels[:, None] == np.arange(probs.shape[1])[None, :]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(
    probs: np.ndarray, labels: np.ndarray, multi_label: bool = False
) -> float:
    """Mean NLL in nats. Single-label: -log p_y. Multi-label: binary cross-entropy over all entries.
    Probabilities are clipped to [1e-12, 1] (see `_EPS`)."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if multi_label:
        y = labels.astype(float)
        p = np.clip(probs, _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))


def calibration_report(
    probs: np.ndarray,
    labels: np.ndarray,
    multi_label: bool = False,
    n_bins: int = 15,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """ECE (equal-width and equal-mass), MCE, Brier, NLL with stratified bootstrap CIs, plus bins.

    ECE is biased upward on small samples (every bin's |gap| includes noise), so bootstrap
    replicates tend to exceed the point estimate: ECE, equal-mass ECE and MCE get the
    bias-recentred percentile interval (`bootstrap.recentred_interval`), which contains the point
    estimate; Brier and NLL the plain percentile interval.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)

    def stat(idx: np.ndarray) -> dict[str, float | None]:
        p, y = probs[idx], labels[idx]
        conf, corr = confidence_and_correct(p, y, multi_label)
        width = reliability_bins(conf, corr, n_bins, "width")
        return {
            "ece": width.ece(),
            "ece_mass": reliability_bins(conf, corr, n_bins, "mass").ece(),
            "mce": width.mce(),
            "brier": brier_score(p, y, multi_label),
            "nll": negative_log_likelihood(p, y, multi_label),
        }

    keys = [tuple(np.flatnonzero(r)) for r in labels] if multi_label else labels.tolist()
    est = bootstrap_metrics(stat, strata_of(keys), n_boot, seed, confidence, recentre=RECENTRED)
    conf, corr = confidence_and_correct(probs, labels, multi_label)
    return {
        **{k: v.to_dict() for k, v in est.items()},
        "n_bins": n_bins,
        # accuracy (single-label) or positive rate (multi-label) next to the mean confidence:
        # a gap between them is a base-rate offset, which one temperature cannot remove
        "mean_confidence": float(np.mean(conf)) if len(conf) else float("nan"),
        "observed_rate": float(np.mean(corr)) if len(corr) else float("nan"),
        "bins_width": reliability_bins(conf, corr, n_bins, "width").to_dict(),
        "bins_mass": reliability_bins(conf, corr, n_bins, "mass").to_dict(),
    }


def bootstrap_ece_by_subgroup(
    probs: np.ndarray,
    labels: np.ndarray,
    columns: Mapping[str, Sequence[str]],
    multi_label: bool = False,
    n_bins: int = 15,
    min_count: int = 1,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Equal-width ECE per value of each metadata column, with bootstrap CIs.

    Args:
        columns: column name -> per-image values (length N; "" means unknown and is reported as
            "(missing)").
        min_count: groups with fewer images get ECE undefined with the reason.

    Returns:
        {column: {value: {"n": int, "ece": Estimate dict, "accuracy": float, "mean_confidence": float}}};
        "accuracy" / "mean_confidence" are the means of what calibration judges (see module doc):
        top-1 accuracy and confidence, or, multi-label, the positive rate and mean probability.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col, values in columns.items():
        vals = np.array([v if v != "" else "(missing)" for v in values], dtype=object)
        if len(vals) != len(probs):
            raise ValueError(
                f"subgroup column {col!r} has {len(vals)} values for {len(probs)} images"
            )
        out[col] = {}
        for v in sorted(set(vals.tolist())):
            sel = np.flatnonzero(vals == v)
            p, y = probs[sel], labels[sel]
            if len(sel) < min_count:
                ece = Estimate.undefined(f"only {len(sel)} images (< {min_count})")
            else:
                keys = [tuple(np.flatnonzero(r)) for r in y] if multi_label else y.tolist()
                ece = bootstrap_metrics(
                    lambda i, p=p, y=y: {
                        "ece": expected_calibration_error(p[i], y[i], n_bins, "width", multi_label)
                    },
                    strata_of(keys),
                    n_boot,
                    seed,
                    confidence,
                    recentre=RECENTRED,
                )["ece"]
            conf, corr = confidence_and_correct(p, y, multi_label)
            out[col][str(v)] = {
                "n": int(len(sel)),
                "ece": ece.to_dict(),
                "accuracy": float(corr.mean()),
                "mean_confidence": float(conf.mean()),
            }
    return out


def plot_reliability(
    bins: ReliabilityBins, path: str | Path, title: str = "Reliability diagram"
) -> Path:
    """Reliability diagram PNG: per-bin accuracy vs confidence (with the diagonal and the gap) above a
    histogram of bin counts (no display needed)."""
    # The object-oriented API (no pyplot) renders with Agg and leaves global backend state alone.
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    used = bins.count > 0
    lo = np.where(np.isfinite(bins.lower), bins.lower, 0.0)
    hi = np.where(np.isfinite(bins.upper), bins.upper, 0.0)
    width = np.maximum(
        hi - lo, 0.01
    )  # equal-mass bins can collapse to one value; keep them visible
    fig = Figure(figsize=(5.5, 6.5))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")

    def bars(axes: Any, heights: np.ndarray, **style: Any) -> None:
        # every bar sits on its bin: left edge at the bin's lower bound, one bin wide
        axes.bar(lo[used], heights[used], width=width[used], align="edge", **style)

    bars(ax, bins.accuracy, color="#4C72B0", edgecolor="black", lw=0.5, label="accuracy")
    bars(
        ax,
        bins.confidence - bins.accuracy,
        bottom=bins.accuracy[used],
        color="#DD8452",
        alpha=0.45,
        edgecolor="#DD8452",
        label="gap to mean confidence",
    )
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.set_title(
        f"{title}\nECE {bins.ece():.3f}, MCE {bins.mce():.3f}, n={bins.n}, "
        f"{len(bins.count)} {bins.strategy} bins",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    bars(axc, bins.count, color="#8C8C8C", edgecolor="black", lw=0.5)
    for x, w, c in zip(lo[used], width[used], bins.count[used], strict=True):
        axc.text(x + w / 2, c, str(int(c)), ha="center", va="bottom", fontsize=7)
    axc.set_ylabel("count")
    axc.set_xlabel("confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
