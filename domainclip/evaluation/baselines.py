"""Baselines beside every evaluation, failing classes and the one-sentence comparison.

A model's numbers mean little alone: 0.64 accuracy is good on 20 classes and useless on two. So
every evaluation also scores, on the same images and with the same metrics and CIs:

* chance: a uniform random guesser (random top-1 class, random scores), simulated `n_sim` times
  on the evaluated targets; value = mean over simulations, ci95 = their 2.5/97.5 percentiles.
  This interval is the "chance CI" that performance floors compare against;
* prior: always predicting the training split's class frequencies (its majority class top-1;
  constant scores give AUROC 0.5);
* untrained: the run's base backbone zero-shot (filled in by `evaluate`: it needs the model);
* linear_probe: logistic regression (scikit-learn, L2, C = 1) fitted on the training split's
  frozen image features of the evaluated model, scored on the evaluated split.

`failing_classes` names the classes whose recall or one-vs-rest AUROC is below a threshold;
`comparison_verdict` says in one sentence how the model compares with its baselines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from domainclip.evaluation.bootstrap import percentile_interval
from domainclip.evaluation.metrics import (
    accuracy,
    average_precision,
    balanced_accuracy,
    macro_f1,
    multi_label_report,
    roc_auc_columns,
    single_label_report,
)

DEFAULT_MIN_RECALL = 0.5
DEFAULT_MIN_AUROC = 0.7
DEFAULT_N_SIM = 1000
BASELINE_ORDER = ("chance", "prior", "untrained", "linear_probe")
BASELINE_NAMES = {
    "model": "this model",
    "chance": "chance (uniform guess)",
    "prior": "majority class / prior",
    "untrained": "untrained backbone (zero-shot)",
    "linear_probe": "linear probe on frozen features",
}


def headline_metrics(multi_label: bool) -> tuple[str, ...]:
    """The metrics baselines are compared on: macro AUROC (multi-label), else accuracy,
    balanced accuracy and macro AUROC."""
    return ("macro_auroc", "macro_ap") if multi_label else (
        "accuracy",
        "balanced_accuracy",
        "macro_auroc",
    )


def _mean_defined(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def chance_metrics(
    y: np.ndarray, n_classes: int, multi_label: bool, n_sim: int = DEFAULT_N_SIM, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Metrics of a uniform random guesser on targets `y`, as Estimate dicts.

    Args:
        y: int [N] class indices (single-label) or {0,1} [N, C] (multi-label).
        n_sim: simulated guessers (at least 200).

    Returns:
        metric -> {"value": mean over simulations, "ci95": [2.5%, 97.5%]}.
    """
    rng = np.random.default_rng(seed)
    n_sim = max(int(n_sim), 200)
    sims: dict[str, list[float]] = {}

    def add(key: str, v: float | None) -> None:
        if v is not None:
            sims.setdefault(key, []).append(float(v))

    if multi_label:
        yy = np.asarray(y).astype(bool)
        for _ in range(n_sim):
            scores = rng.random(yy.shape)
            add("macro_auroc", _mean_defined(roc_auc_columns(yy, scores)))
            add(
                "macro_ap",
                _mean_defined([average_precision(yy[:, k], scores[:, k]) for k in range(n_classes)]),
            )
            add("subset_accuracy", float(np.mean((yy == (scores >= 0.5)).all(1))))
    else:
        yt = np.asarray(y, dtype=np.int64)
        onehot = yt[:, None] == np.arange(n_classes)[None, :]
        for _ in range(n_sim):
            pred = rng.integers(0, n_classes, size=len(yt))
            scores = rng.random((len(yt), n_classes))
            add("accuracy", accuracy(yt, pred))
            add("balanced_accuracy", balanced_accuracy(yt, pred, n_classes))
            add("macro_f1", macro_f1(yt, pred, n_classes))
            add("macro_auroc", _mean_defined(roc_auc_columns(onehot, scores)))
    out = {}
    for key, vals in sims.items():
        arr = np.asarray(vals)
        lo, hi = percentile_interval(arr, 0.95)
        out[key] = {"value": float(arr.mean()), "ci95": [lo, hi]}
    return out


def prior_probabilities(
    train_y: np.ndarray | None, y: np.ndarray, n_classes: int, multi_label: bool
) -> tuple[np.ndarray, str]:
    """The class frequencies of the training split (else of the evaluated split), [C], and where
    they came from."""
    source, ref = ("train split", train_y) if train_y is not None and len(train_y) else (
        "evaluated split (no training labels)",
        y,
    )
    if multi_label:
        freq = np.asarray(ref, dtype=float).mean(0)
    else:
        freq = np.bincount(np.asarray(ref, dtype=np.int64), minlength=n_classes) / len(ref)
    return freq, source


def constant_report(
    freq: np.ndarray, y: np.ndarray, classes: Sequence[str], multi_label: bool, n_boot: int, seed: int
) -> dict[str, Any]:
    """The classification report of a model predicting `freq` (float [C]) for every image."""
    probs = np.tile(np.asarray(freq, dtype=float), (len(y), 1))
    report = multi_label_report if multi_label else single_label_report
    return report(probs, y, classes, n_boot=n_boot, seed=seed)


def linear_probe_probabilities(
    train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, n_classes: int, multi_label: bool
) -> np.ndarray:
    """Logistic regression (L2, C = 1, lbfgs) on frozen features: probabilities [N, C] for `x`.

    Args:
        train_x: float [M, D] training-split image features; train_y: int [M] or {0,1} [M, C].
        x: float [N, D] features of the evaluated images.

    Classes (findings) absent from (constant in) the training labels get probability 0 (their
    training prevalence).
    """
    from sklearn.linear_model import LogisticRegression

    train_x, x = np.asarray(train_x, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if multi_label:
        ty = np.asarray(train_y).astype(int)
        out = np.tile(ty.mean(0), (len(x), 1)).astype(float)
        for k in range(n_classes):
            if 0 < ty[:, k].sum() < len(ty):
                clf = LogisticRegression(max_iter=2000).fit(train_x, ty[:, k])
                out[:, k] = clf.predict_proba(x)[:, 1]
        return out
    ty = np.asarray(train_y, dtype=np.int64)
    out = np.zeros((len(x), n_classes))
    present = np.unique(ty)
    if len(present) == 1:
        out[:, present[0]] = 1.0
        return out
    clf = LogisticRegression(max_iter=2000).fit(train_x, ty)
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def per_class_recall(classification: Mapping[str, Any], multi_label: bool) -> dict[str, float | None]:
    """Recall per class: from `per_class[c].recall` when recorded, else (single-label) from the
    confusion matrix; None when it cannot be known (no positives, or an old multi-label file)."""
    classes = list(classification.get("classes") or classification.get("per_class", {}))
    out: dict[str, float | None] = {}
    cm = classification.get("confusion_matrix")
    for k, c in enumerate(classes):
        rec = (classification.get("per_class", {}).get(c) or {}).get("recall")
        if isinstance(rec, dict):
            out[c] = rec.get("value")
        elif not multi_label and cm and k < len(cm) and sum(cm[k]) > 0:
            out[c] = cm[k][k] / sum(cm[k])
        else:
            out[c] = None
    return out


def failing_classes(
    classification: Mapping[str, Any],
    multi_label: bool,
    min_recall: float = DEFAULT_MIN_RECALL,
    min_auroc: float = DEFAULT_MIN_AUROC,
) -> list[dict[str, Any]]:
    """Classes with recall < min_recall or one-vs-rest AUROC < min_auroc.

    Returns:
        [{"class", "n_pos", "recall", "auroc", "why"}] in class order; `why` is a sentence part
        such as "recall 0.00 (0 of 11) < 0.5".
    """
    recalls = per_class_recall(classification, multi_label)
    out = []
    for c, pc in (classification.get("per_class") or {}).items():
        n_pos = int(pc.get("n_pos", 0))
        recall = recalls.get(c)
        auroc = (pc.get("auroc") or {}).get("value")
        why = []
        if recall is not None and recall < min_recall:
            hits = round(recall * n_pos)
            why.append(f"recall {recall:.2f} ({hits} of {n_pos}) < {min_recall:g}")
        if auroc is not None and auroc < min_auroc:
            why.append(f"AUROC {auroc:.3f} < {min_auroc:g}")
        if why:
            out.append(
                {"class": c, "n_pos": n_pos, "recall": recall, "auroc": auroc, "why": "; ".join(why)}
            )
    return out


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    e = metrics.get(key)
    return e.get("value") if isinstance(e, dict) else None


def _high(metrics: Mapping[str, Any], key: str) -> float | None:
    e = metrics.get(key)
    ci = e.get("ci95") if isinstance(e, dict) else None
    return ci[1] if ci else _value(metrics, key)


BEATEN = {
    "linear_probe": "A linear probe on the frozen image features beats this model",
    "untrained": "The untrained backbone beats this model: fine-tuning made it worse",
    "prior": "Always predicting the majority class beats this model",
}
MATCHED = {
    "linear_probe": "A linear probe on the frozen image features does as well as this model",
    "untrained": "The untrained backbone does as well as this model: fine-tuning added nothing",
    "prior": "Always predicting the majority class does as well as this model",
}
_CHANCE = "This model performs at chance level"


def _label(key: str) -> str:
    return key.replace("_", " ")


def disqualifies(verdict: str | None) -> bool:
    """Whether a `comparison_verdict` sentence says the model should not be used (at chance, or
    beaten by a baseline outside its CI)."""
    return bool(verdict) and (
        verdict.startswith(_CHANCE) or any(verdict.startswith(p) for p in BEATEN.values())
    )


def comparison_verdict(
    model: Mapping[str, Any], baselines: Mapping[str, Any], multi_label: bool
) -> str:
    """One sentence (or two) saying how the model compares with its baselines.

    Rules, most severe first: at chance (a headline metric not above the chance CI's upper end);
    a baseline beats the model (its point estimate above the model's CI on a headline metric);
    a baseline matches it (point estimate at least the model's); else the model beats them all.

    Args:
        model: the model's classification report (Estimate dicts per metric).
        baselines: name -> {"metrics": {metric: Estimate dict}} or {"reason": ...}.
    """
    keys = [k for k in headline_metrics(multi_label) if _value(model, k) is not None]
    chance = (baselines.get("chance") or {}).get("metrics") or {}
    at_chance = [
        k for k in keys
        if k != "accuracy" and _value(chance, k) is not None and _value(model, k) <= _high(chance, k)
    ]
    if at_chance:
        return (
            f"{_CHANCE}: its "
            + " and ".join(k.replace("_", " ") for k in at_chance)
            + " lie within what uniform guessing reaches on these images. Do not deploy it."
        )
    beaten, matched = [], []
    for name in ("untrained", "linear_probe", "prior"):
        metrics = (baselines.get(name) or {}).get("metrics") or {}
        above = [k for k in keys if _value(metrics, k) is not None and _value(metrics, k) > _high(model, k)]
        level = [k for k in keys if _value(metrics, k) is not None and _value(metrics, k) >= _value(model, k)]
        if above:
            beaten.append((name, above))
        elif level:
            matched.append((name, level))

    def versus(name: str, ks: list[str]) -> str:
        return ", ".join(
            f"{_label(k)} {_value(baselines[name]['metrics'], k):.3f} vs {_value(model, k):.3f}" for k in ks
        )

    if beaten:
        name, ks = beaten[0]
        return f"{BEATEN[name]} ({versus(name, ks)}, outside the model's 95% CI)."
    if matched:
        name, ks = matched[0]
        return f"{MATCHED[name]} ({versus(name, ks)}; within the model's 95% CI)."
    done = [BASELINE_NAMES[n] for n in BASELINE_ORDER if (baselines.get(n) or {}).get("metrics")]
    return f"This model beats {', '.join(done)}."
