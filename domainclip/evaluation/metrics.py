"""Classification metrics with bootstrap confidence intervals (single-label and multi-label).

Point metrics are plain numpy so the bootstrap can call them thousands of times; each equals the
scikit-learn function named in its docstring (tests check it). Per-class AUROC / AP are one-vs-rest
on the class probabilities (single-label) or per finding (multi-label); a class whose evaluated
images are all positive or all negative gets an undefined AUROC/AP with the reason instead of a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from domainclip.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    Estimate,
    bootstrap_metrics,
    strata_of,
)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction correct. y_true, y_pred: int [N]."""
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """int [C, C]: rows are true classes, columns predicted (sklearn.metrics.confusion_matrix)."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in y_true (sklearn.metrics.balanced_accuracy_score)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over classes occurring in y_true or y_pred
    (sklearn.metrics.f1_score(average="macro", zero_division=0))."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    used = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[used].mean())


def binary_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """F1 of the positive class (0 when there are no positives and no predicted positives)."""
    tp = float(np.sum(y & pred))
    denom = float(y.sum() + pred.sum())
    return 2 * tp / denom if denom > 0 else 0.0


def single_class_reason(y: np.ndarray) -> str | None:
    """Why AUROC/AP is undefined for binary labels y (None when both values occur)."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return f"no positive images among {len(y)} (one label value only)"
    if n_pos == len(y):
        return f"all {len(y)} images are positive (one label value only)"
    return None


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary AUROC via the Mann-Whitney U statistic with average ranks for ties
    (equals sklearn.metrics.roc_auc_score). None when y has a single value."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision, sum over thresholds of (R_t - R_{t-1}) P_t, tied scores grouped into one
    threshold (equals sklearn.metrics.average_precision_score). None without positives or negatives."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None
    order = np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")
    s, ys = np.asarray(scores, dtype=float)[order], y[order]
    tp = np.cumsum(ys)
    # Precision at a positive counts every item scoring >= it: the end of its block of ties.
    is_end = np.r_[s[1:] != s[:-1], True]
    ends = np.flatnonzero(is_end)
    block = np.r_[0, np.cumsum(is_end[:-1])]
    last = ends[block]
    precision = tp[last] / (last + 1.0)
    return float(precision[ys].sum() / n_pos)


def roc_auc_columns(y: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """Per-column AUROC of bool y [N, C] vs scores [N, C] (one ranking pass for all columns)."""
    y = np.asarray(y, dtype=bool)
    ranks = rankdata(scores, axis=0)
    n_pos = y.sum(0)
    n_neg = len(y) - n_pos
    u = (ranks * y).sum(0) - n_pos * (n_pos + 1) / 2.0
    return [
        float(u[k] / (n_pos[k] * n_neg[k])) if n_pos[k] and n_neg[k] else None
        for k in range(y.shape[1])
    ]


def _mean_defined(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def single_label_report(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class one-vs-rest AUROC/AP, macro AUROC, with CIs.

    Args:
        probs: float [N, C] class probabilities (rows sum to 1).
        y_true: int [N] true class indices into `classes`.

    Returns:
        {"n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_ap" (Estimate dicts),
        "per_class": {class: {"n_pos", "auroc", "ap", "recall"}}, "confusion_matrix": [[...]], "classes",
        "bootstrap": {...}}. Macro AUROC/AP average the classes where they are defined.
    """
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=np.int64)
    n, c = probs.shape
    if c != len(classes) or len(y_true) != n:
        raise ValueError(
            f"probs {probs.shape}, y_true {y_true.shape} and {len(classes)} classes disagree"
        )
    pred = probs.argmax(1)
    onehot = y_true[:, None] == np.arange(c)[None, :]
    reasons = {}
    for k, name in enumerate(classes):
        r = single_class_reason(onehot[:, k])
        if r:
            reasons[f"auroc/{name}"] = reasons[f"ap/{name}"] = r
        if not onehot[:, k].any():
            reasons[f"recall/{name}"] = "no images of this class"
    if sum(k.startswith("auroc/") for k in reasons) == c:
        reasons["macro_auroc"] = reasons["macro_ap"] = (
            "no class has both positive and negative images"
        )

    def stat(idx: np.ndarray) -> dict[str, float | None]:
        yt, yp, p, oh = y_true[idx], pred[idx], probs[idx], onehot[idx]
        aucs = roc_auc_columns(oh, p)
        aps = [average_precision(oh[:, k], p[:, k]) for k in range(c)]
        out: dict[str, float | None] = {
            "accuracy": accuracy(yt, yp),
            "balanced_accuracy": balanced_accuracy(yt, yp, c),
            "macro_f1": macro_f1(yt, yp, c),
            "macro_auroc": _mean_defined(aucs),
            "macro_ap": _mean_defined(aps),
        }
        hits = np.bincount(yt[yt == yp], minlength=c)
        support = np.bincount(yt, minlength=c)
        for k, name in enumerate(classes):
            out[f"auroc/{name}"] = aucs[k]
            out[f"ap/{name}"] = aps[k]
            out[f"recall/{name}"] = float(hits[k] / support[k]) if support[k] else None
        return out

    est = bootstrap_metrics(stat, strata_of(y_true.tolist()), n_boot, seed, confidence, reasons)
    return {
        "n": n,
        "classes": list(classes),
        **{
            k: est[k].to_dict()
            for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_ap")
        },
        "per_class": {
            name: {
                "n_pos": int(onehot[:, k].sum()),
                "auroc": est[f"auroc/{name}"].to_dict(),
                "ap": est[f"ap/{name}"].to_dict(),
                "recall": est[f"recall/{name}"].to_dict(),
            }
            for k, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, pred, c).tolist(),
        "bootstrap": _bootstrap_info(n_boot, seed, confidence),
    }


def multi_label_report(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    threshold: float = 0.5,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Per-finding AUROC/AP, macro AUROC/AP, macro-F1 and exact-match accuracy at `threshold`, with CIs.

    Args:
        probs: float [N, C] per-finding probabilities P(present).
        y_true: {0,1} [N, C] finding indicators.

    Returns:
        {"n", "macro_auroc", "macro_ap", "macro_f1", "subset_accuracy", "per_class": {finding:
        {"n_pos", "auroc", "ap", "f1", "recall" (at `threshold`)}}, "threshold", "classes", "bootstrap"}. Images are resampled
        within strata of identical label sets, so per-finding positive counts are fixed.
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true).astype(bool)
    n, c = probs.shape
    if y.shape != probs.shape or c != len(classes):
        raise ValueError(
            f"probs {probs.shape}, y_true {y.shape} and {len(classes)} classes disagree"
        )
    pred = probs >= threshold
    reasons = {}
    for k, name in enumerate(classes):
        r = single_class_reason(y[:, k])
        if r:
            reasons[f"auroc/{name}"] = reasons[f"ap/{name}"] = r
        if not y[:, k].any():
            reasons[f"recall/{name}"] = "no images with this finding"
    if sum(k.startswith("auroc/") for k in reasons) == c:
        reasons["macro_auroc"] = reasons["macro_ap"] = (
            "no finding has both positive and negative images"
        )

    def stat(idx: np.ndarray) -> dict[str, float | None]:
        yy, p, pr = y[idx], probs[idx], pred[idx]
        aucs = roc_auc_columns(yy, p)
        aps = [average_precision(yy[:, k], p[:, k]) for k in range(c)]
        f1s = [binary_f1(yy[:, k], pr[:, k]) for k in range(c)]
        out: dict[str, float | None] = {
            "macro_auroc": _mean_defined(aucs),
            "macro_ap": _mean_defined(aps),
            "macro_f1": float(np.mean(f1s)),
            "subset_accuracy": float(np.mean((yy == pr).all(1))),
        }
        for k, name in enumerate(classes):
            out[f"auroc/{name}"], out[f"ap/{name}"], out[f"f1/{name}"] = aucs[k], aps[k], f1s[k]
            n_pos = int(yy[:, k].sum())
            out[f"recall/{name}"] = float((yy[:, k] & pr[:, k]).sum() / n_pos) if n_pos else None
        return out

    keys = [tuple(np.flatnonzero(row)) for row in y]
    est = bootstrap_metrics(stat, strata_of(keys), n_boot, seed, confidence, reasons)
    return {
        "n": n,
        "classes": list(classes),
        "threshold": threshold,
        **{k: est[k].to_dict() for k in ("macro_auroc", "macro_ap", "macro_f1", "subset_accuracy")},
        "per_class": {
            name: {
                "n_pos": int(y[:, k].sum()),
                "auroc": est[f"auroc/{name}"].to_dict(),
                "ap": est[f"ap/{name}"].to_dict(),
                "f1": est[f"f1/{name}"].to_dict(),
                "recall": est[f"recall/{name}"].to_dict(),
            }
            for k, name in enumerate(classes)
        },
        "bootstrap": _bootstrap_info(n_boot, seed, confidence),
    }


def _bootstrap_info(n_boot: int, seed: int, confidence: float) -> dict[str, Any]:
    return {
        "method": "percentile (calibration errors: bias-recentred percentile)",
        "stratified_by": "label set",
        "n_boot": n_boot,
        "seed": seed,
        "confidence": confidence,
    }


__all__ = [
    "Estimate",
    "accuracy",
    "average_precision",
    "balanced_accuracy",
    "binary_f1",
    "confusion_matrix",
    "macro_f1",
    "multi_label_report",
    "roc_auc",
    "roc_auc_columns",
    "single_class_reason",
    "single_label_report",
]
