"""What `evaluate` adds so its numbers cannot mislead: baselines, failing classes, warnings.

`baselines_for` scores chance, the training prior, the untrained backbone (runs only) and a linear
probe on the training split's frozen image features of the evaluated model (see
`evaluation.baselines`); `run_warnings` lists every warning of the evaluation
(`{"kind", "message"}`) so reports and the model card can show them instead of the log alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from domainclip.calibrators import temperature_at_bound
from domainclip.datasets.manifest import Manifest
from domainclip.errors import DomainClipError
from domainclip.evaluation.baselines import (
    DEFAULT_N_SIM,
    chance_metrics,
    comparison_verdict,
    constant_report,
    linear_probe_probabilities,
    prior_probabilities,
)
from domainclip.evaluation.embed import embed_split
from domainclip.evaluation.results import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS
from domainclip.evaluation.task import build_targets
from domainclip.models import Backbone
from domainclip.scoring.prompts import PromptSet

log = logging.getLogger(__name__)


def _metrics(report: dict[str, Any], multi: bool) -> dict[str, Any]:
    keys = MULTI_LABEL_METRICS if multi else SINGLE_LABEL_METRICS
    return {k: report[k] for k in keys if isinstance(report.get(k), dict)}


def train_features(
    bb: Backbone,
    man: Manifest,
    train_split: str,
    classes: list[str],
    ps: PromptSet,
    transform: Callable | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image features [M, D] and targets of the training split's labelled rows (the evaluated
    model's image tower, frozen; rows whose label is not scored are left out).

    Raises:
        DomainClipError: no such split, unreadable images, no labelled row.
    """
    emb = embed_split(bb, man, train_split, transform=transform)
    tgt = build_targets(emb.rows, classes, ps, skip_uncovered=True)
    return emb.image_feats[tgt.keep].numpy(), tgt.y


def baselines_for(
    *,
    bb: Backbone,
    man: Manifest,
    ps: PromptSet,
    classes: list[str],
    y: np.ndarray,
    test_x: np.ndarray,
    train_split: str,
    split: str,
    transform: Callable | None,
    untrained: Callable[[], dict[str, Any]] | None,
    n_boot: int,
    seed: int,
    model_report: dict[str, Any],
) -> dict[str, Any]:
    """{"chance", "prior", "untrained", "linear_probe"}: each {"what", "metrics"} or {"what",
    "reason"} (could not be computed), plus "verdict" (one sentence, `comparison_verdict`).

    Args:
        y: targets of the evaluated rows; test_x: float [N, D] their image features.
        untrained: () -> classification report of the base backbone (None: not a run).
        model_report: the model's classification report.
    """
    multi, n_classes = ps.multi_label, len(classes)
    out: dict[str, Any] = {
        "chance": {
            "what": "uniform random guessing, simulated on the evaluated images (the chance CI)",
            "metrics": chance_metrics(y, n_classes, multi, n_boot or DEFAULT_N_SIM, seed),
        }
    }
    train: tuple[np.ndarray, np.ndarray] | None = None
    reason = None
    if split == train_split:
        reason = f"the evaluated split is the training split ({split})"
    else:
        try:
            train = train_features(bb, man, train_split, classes, ps, transform)
        except DomainClipError as exc:
            reason = f"no usable training split {train_split!r}: {exc}"
    freq, source = prior_probabilities(None if train is None else train[1], y, n_classes, multi)
    out["prior"] = {
        "what": f"always the class frequencies of the {source}"
        + ("" if multi else f" (top-1: {classes[int(np.argmax(freq))]})"),
        "metrics": _metrics(constant_report(freq, y, classes, multi, n_boot, seed), multi),
    }
    if untrained is None:
        out["untrained"] = {"what": "untrained backbone", "reason": "not a fine-tuning run"}
    else:
        try:
            out["untrained"] = {"what": "the run's base backbone, zero-shot", "metrics": _metrics(untrained(), multi)}
        except DomainClipError as exc:
            out["untrained"] = {"what": "the run's base backbone", "reason": str(exc)}
    probe_what = "logistic regression on the frozen image features of this model"
    if train is None:
        out["linear_probe"] = {"what": probe_what, "reason": reason}
    else:
        probs = linear_probe_probabilities(train[0], train[1], test_x, n_classes, multi)
        report_fn = _report_fn(multi)
        out["linear_probe"] = {
            "what": f"{probe_what}, fitted on {len(train[1])} images of split {train_split}",
            "n_train": int(len(train[1])),
            "metrics": _metrics(report_fn(probs, y, classes, n_boot=n_boot, seed=seed), multi),
        }
    out["verdict"] = comparison_verdict(_metrics(model_report, multi), out, multi)
    return out


def _report_fn(multi: bool) -> Callable[..., dict[str, Any]]:
    from domainclip.evaluation.metrics import multi_label_report, single_label_report

    return multi_label_report if multi else single_label_report


def run_warnings(
    t_info: dict[str, Any],
    n_unreadable: int,
    skipped: dict[str, int],
    baselines: dict[str, Any] | None,
) -> list[dict[str, str]]:
    """Every warning of an evaluation as {"kind", "message"} (kinds: temperature_at_bound,
    temperature_prompts, skipped_rows, baseline_missing)."""
    out = []
    t = t_info.get("value")
    fit = t_info.get("fit") or {}
    if isinstance(t, (int, float)) and temperature_at_bound(float(t)):
        out.append(
            {
                "kind": "temperature_at_bound",
                "message": f"the temperature T = {t:.4g} (fitted on split {fit.get('split', '?')}) "
                "is at the search bound: the validation data barely constrain it, so calibration "
                "numbers after scaling are not trustworthy",
            }
        )
    if t_info.get("warning"):
        out.append({"kind": "temperature_prompts", "message": str(t_info["warning"])})
    if n_unreadable:
        out.append({"kind": "skipped_rows", "message": f"{n_unreadable} unreadable image(s) skipped"})
    for why, n in skipped.items():
        out.append({"kind": "skipped_rows", "message": f"{n} row(s) left out: {why}"})
    for name, b in (baselines or {}).items():
        if isinstance(b, dict) and b.get("reason") and name != "untrained":
            out.append({"kind": "baseline_missing", "message": f"{name} baseline: {b['reason']}"})
    for w in out:
        log.warning("evaluation: %s", w["message"])
    return out
