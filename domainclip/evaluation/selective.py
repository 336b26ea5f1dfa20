"""Selective prediction: answer the most confident cases, refer the rest to a person.

Decisions and confidences: single-label, the top-1 class with confidence max_c p_c; multi-label,
every (image, finding) decision p >= 0.5 with confidence max(p, 1 - p). Sorting by confidence
(descending; ties keep input order), the risk at coverage k / M is the error rate among the k most
confident decisions. AURC is the mean risk over k = 1..M (area under the risk-coverage curve; lower
is better; a perfect ranking of the same errors gives the minimum `aurc_optimal`).
`refer`: for each target error rate, the smallest fraction of decisions to refer to a person so
the kept ones have at most that error rate (1.0 when even the single most confident one errs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_TARGETS = (0.01, 0.05, 0.1)
DEFAULT_REFER_ERROR = 0.05  # the referral rule stored with conformal thresholds
CURVE_POINTS = 101


def decisions(probs: np.ndarray, labels: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence float [M], error float [M] in {0, 1}) as in the module doc."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if multi_label:
        p, y = probs.reshape(-1), labels.reshape(-1)
        return np.maximum(p, 1 - p), ((p >= 0.5).astype(int) != y).astype(float)
    return probs.max(1), (probs.argmax(1) != labels).astype(float)


def _curve(error_sorted: np.ndarray) -> np.ndarray:
    """Risk of the k most confident, k = 1..M."""
    return np.cumsum(error_sorted) / np.arange(1, len(error_sorted) + 1)


def risk_coverage(
    probs: np.ndarray,
    labels: np.ndarray,
    multi_label: bool = False,
    targets: Sequence[float] = DEFAULT_TARGETS,
) -> dict[str, Any]:
    """Risk-coverage curve (downsampled to <= 101 points), AURC, optimal AURC and referral rates."""
    conf, err = decisions(probs, labels, multi_label)
    m = len(conf)
    if m == 0:
        raise ValueError("selective prediction needs at least one decision")
    risk = _curve(err[np.argsort(-conf, kind="stable")])
    optimal = _curve(np.sort(err))
    idx = np.unique(np.linspace(0, m - 1, min(CURVE_POINTS, m)).round().astype(int))
    refer = {}
    for t in targets:
        ok = np.flatnonzero(risk <= t + 1e-12)
        refer[f"{t:g}"] = 1.0 if len(ok) == 0 else float(1 - (ok.max() + 1) / m)
    return {
        "n_decisions": m,
        "confidence": "top-1 probability" if not multi_label else "max(p, 1 - p) per finding",
        "coverage": [float((i + 1) / m) for i in idx],
        "risk": [float(risk[i]) for i in idx],
        "aurc": float(risk.mean()),
        "aurc_optimal": float(optimal.mean()),
        "error_rate": float(err.mean()),
        "refer": refer,
    }


def referral_rule(
    probs: np.ndarray, labels: np.ndarray, multi_label: bool, target_error: float, split: str
) -> dict[str, Any]:
    """The rule `domainclip predict` applies (`refer` column): on calibration data (never test),
    the lowest confidence c such that the decisions with confidence >= c have error <= target.

    Returns {"target_error", "min_confidence", "split", "n" (decisions), "refer_rate" (fraction
    of those decisions below c), "confidence" (what is compared)}. min_confidence is above 1 (every
    decision referred) when even the most confident decision errs.
    """
    conf, err = decisions(probs, labels, multi_label)
    order = np.argsort(-conf, kind="stable")
    risk = _curve(err[order])
    ok = np.flatnonzero(risk <= target_error + 1e-12)
    if len(ok) == 0:
        cut, kept = 1.0 + 1e-9, 0
    else:
        cut = float(conf[order][ok.max()])
        kept = int((conf >= cut).sum())
    return {
        "target_error": float(target_error),
        "min_confidence": cut,
        "split": split,
        "n": int(len(conf)),
        "refer_rate": float(1 - kept / len(conf)) if len(conf) else 1.0,
        "confidence": "top-1 probability" if not multi_label else "max(p, 1 - p) per finding (an image: its least certain finding)",
    }


def plot_risk_coverage(sel: dict[str, Any], path: Any, title: str) -> Any:
    """PNG of the risk-coverage curve (no display needed)."""
    from pathlib import Path

    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(sel["coverage"], sel["risk"], color="#4C72B0", label=f"model (AURC {sel['aurc']:.3f})")
    ax.axhline(sel["error_rate"], ls="--", color="grey", lw=1, label="error at full coverage")
    ax.set_xlabel("coverage (fraction answered)")
    ax.set_ylabel("risk (error rate of answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, max(sel["risk"]) * 1.05))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
