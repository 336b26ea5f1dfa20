"""How conformal prediction sets (`calibrators.conformal`) behave on an evaluated split.

Coverage: single-label, the fraction of images whose true class is in the set; multi-label, the
fraction of present (image, finding) pairs that are flagged (1 - FNR). Intervals are exact
Clopper-Pearson 95 % intervals of a binomial proportion (each image / positive is one trial).
Per class / finding the same over that class's images / positives; the worst class is named.
Set size: classes (findings) per image: mean, the distribution {size: count}, the singleton
rate and the empty-set rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from domainclip.calibrators.conformal import ConformalThresholds
from domainclip.evaluation.bootstrap import Estimate


def proportion(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """k / n with its Clopper-Pearson interval (undefined when n = 0)."""
    if n == 0:
        return Estimate.undefined("no images")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high))


def conformal_report(
    thresholds: ConformalThresholds,
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Coverage (overall, per class, worst class) and set sizes of `thresholds` on probs [N, C].

    labels: int [N] (single-label) or {0, 1} [N, C] (multi-label, `thresholds.multi_label`).
    """
    sets = thresholds.predict_sets(probs)
    labels = np.asarray(labels)
    if thresholds.multi_label:
        hit = sets & (labels == 1)
        covered = [int(hit[:, j].sum()) for j in range(len(classes))]
        totals = [int((labels[:, j] == 1).sum()) for j in range(len(classes))]
    else:
        in_set = sets[np.arange(len(labels)), labels]
        covered = [int(in_set[labels == j].sum()) for j in range(len(classes))]
        totals = [int((labels == j).sum()) for j in range(len(classes))]
    per_class = {
        c: {"n": totals[j], "coverage": proportion(covered[j], totals[j]).to_dict()}
        for j, c in enumerate(classes)
    }
    defined = [j for j in range(len(classes)) if totals[j]]
    worst = min(defined, key=lambda j: covered[j] / totals[j]) if defined else None
    sizes = sets.sum(axis=1)
    return {
        "thresholds": thresholds.to_dict(),
        "target_coverage": 1 - thresholds.alpha,
        "coverage": proportion(sum(covered), sum(totals)).to_dict(),
        "per_class": per_class,
        "worst_class": None if worst is None else classes[worst],
        "mean_set_size": float(sizes.mean()) if len(sizes) else None,
        "set_sizes": {str(s): int((sizes == s).sum()) for s in range(len(classes) + 1)},
        "singleton_rate": float(np.mean(sizes == 1)) if len(sizes) else None,
        "empty_rate": float(np.mean(sizes == 0)) if len(sizes) else None,
        "unit": "present findings" if thresholds.multi_label else "images",
    }
