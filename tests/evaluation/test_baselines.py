"""Baselines beside the model, failing classes, the verdict sentence, ECE intervals (issue #17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domainclip.evaluation.baselines import (
    chance_metrics,
    comparison_verdict,
    failing_classes,
    linear_probe_probabilities,
)
from domainclip.evaluation.bootstrap import bootstrap_metrics, strata_of
from domainclip.evaluation.calibration import (
    calibration_report,
    confidence_and_correct,
    reliability_bins,
)
from domainclip.evaluation.metrics import single_label_report

CLASSES = ["a", "b", "c"]


def _probs_from(pred: np.ndarray, c: int, confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), c), (1 - confidence) / (c - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_chance_metrics_of_uniform_guessing():
    y = np.repeat(np.arange(4), 50)
    m = chance_metrics(y, 4, False, n_sim=400, seed=1)
    assert m["accuracy"]["value"] == pytest.approx(0.25, abs=0.01)
    assert m["balanced_accuracy"]["value"] == pytest.approx(0.25, abs=0.01)
    assert m["macro_auroc"]["value"] == pytest.approx(0.5, abs=0.01)
    lo, hi = m["balanced_accuracy"]["ci95"]
    # binomial: sd of accuracy of 200 guesses at p = 0.25 is 0.031, so the 95% range is ~ +-0.06
    assert 0.17 < lo < 0.22 and 0.28 < hi < 0.33


def test_a_class_with_zero_recall_is_named():
    y = np.repeat(np.arange(3), 11)
    pred = y.copy()
    pred[y == 2] = 0  # class c: 0 of 11 right
    rep = single_label_report(_probs_from(pred, 3), y, CLASSES, n_boot=50)
    assert rep["per_class"]["c"]["recall"]["value"] == 0.0
    assert rep["per_class"]["a"]["recall"]["value"] == 1.0
    failing = failing_classes(rep, False, min_recall=0.5, min_auroc=0.7)
    assert [f["class"] for f in failing] == ["c"]
    assert "recall 0.00 (0 of 11) < 0.5" in failing[0]["why"]


def test_failing_classes_from_an_old_report_without_recall_use_the_confusion_matrix():
    y = np.repeat(np.arange(3), 10)
    pred = y.copy()
    pred[y == 1] = 2
    rep = single_label_report(_probs_from(pred, 3), y, CLASSES, n_boot=0)
    for v in rep["per_class"].values():
        del v["recall"]
    assert [f["class"] for f in failing_classes(rep, False)] == ["b"]


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4
    ty = np.repeat(np.arange(3), 20)
    tx = centres[ty] + rng.normal(size=(60, 8))
    y = np.repeat(np.arange(3), 10)
    x = centres[y] + rng.normal(size=(30, 8))
    p = linear_probe_probabilities(tx, ty, x, 3, False)
    assert p.shape == (30, 3) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y).mean() > 0.9


def _baselines(probe_acc: float, chance_hi: float = 0.45) -> dict:
    def e(v, lo=None, hi=None):
        return {"value": v, "ci95": [lo if lo is not None else v - 0.05, hi if hi is not None else v + 0.05]}

    return {
        "chance": {"what": "", "metrics": {"accuracy": e(0.33), "balanced_accuracy": e(0.33, 0.2, chance_hi), "macro_auroc": e(0.5, 0.4, 0.6)}},
        "prior": {"what": "", "metrics": {"accuracy": e(0.4), "balanced_accuracy": e(0.33), "macro_auroc": e(0.5, 0.5, 0.5)}},
        "untrained": {"what": "", "reason": "not a fine-tuning run"},
        "linear_probe": {"what": "", "metrics": {"accuracy": e(probe_acc), "balanced_accuracy": e(probe_acc), "macro_auroc": e(0.87)}},
    }


def test_verdict_names_a_linear_probe_that_beats_the_model():
    model = {
        "accuracy": {"value": 0.64, "ci95": [0.60, 0.68]},
        "balanced_accuracy": {"value": 0.62, "ci95": [0.58, 0.66]},
        "macro_auroc": {"value": 0.849, "ci95": [0.83, 0.86]},
    }
    v = comparison_verdict(model, _baselines(0.705), False)
    assert v.startswith("A linear probe on the frozen image features beats this model")
    assert "accuracy 0.705 vs 0.640" in v


def test_verdict_says_chance_level_first():
    model = {
        "accuracy": {"value": 0.35, "ci95": [0.30, 0.40]},
        "balanced_accuracy": {"value": 0.34, "ci95": [0.29, 0.39]},
        "macro_auroc": {"value": 0.52, "ci95": [0.47, 0.57]},
    }
    v = comparison_verdict(model, _baselines(0.9), False)
    assert v.startswith("This model performs at chance level")


def test_verdict_when_the_model_beats_every_baseline():
    model = {
        "accuracy": {"value": 0.95, "ci95": [0.92, 0.97]},
        "balanced_accuracy": {"value": 0.95, "ci95": [0.92, 0.97]},
        "macro_auroc": {"value": 0.99, "ci95": [0.98, 1.0]},
    }
    v = comparison_verdict(model, _baselines(0.7), False)
    assert v.startswith("This model beats chance")


def test_ece_interval_contains_its_point_estimate():
    """A reproducer: the plain percentile interval of equal-mass ECE lies above its point
    estimate (0.133 [0.142, 0.288]); the bias-recentred interval contains it."""
    rng = np.random.default_rng(0)
    n, c = 60, 3
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)

    def stat(idx):
        conf, corr = confidence_and_correct(p[idx], y[idx])
        return {"ece_mass": reliability_bins(conf, corr, 15, "mass").ece()}

    plain = bootstrap_metrics(stat, strata_of(y.tolist()), 300, 0)["ece_mass"]
    assert plain.low > plain.value  # the defect: the point lies below its own interval
    report = calibration_report(p, y, n_bins=15, n_boot=300, seed=0)
    for key in ("ece", "ece_mass", "mce"):
        lo, hi = report[key]["ci95"]
        assert lo <= report[key]["value"] <= hi, key
        assert lo >= 0.0
    assert report["ece_mass"]["value"] == pytest.approx(plain.value)
    # same width as the plain interval (shifted, not widened), up to the clip at 0
    lo, hi = report["ece_mass"]["ci95"]
    assert hi - lo == pytest.approx(plain.high - plain.low, rel=0.05) or lo == 0.0


REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


def test_linear_probe_run_evaluation_has_baselines_and_its_own_title(tmp_path, synthetic_manifest):
    from domainclip.evaluation.evaluate import run_evaluation
    from domainclip.evaluation.report import render_markdown
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    backbone = save_backbone(tiny_open_clip_backbone("cnn", seed=2), tmp_path / "bb")
    cfg = load_config(
        None,
        [
            f"backbone.spec={backbone}",
            f"data.manifest={synthetic_manifest}",
            f"eval.prompts={PROMPTS}",
            "method.name=linear_probe",
            "train.progress=false",
        ],
    )
    res = finetune(cfg, tmp_path / "probe")
    assert "head_acc" in res.best_metrics and "zero_shot_acc" not in res.best_metrics
    r = run_evaluation(res.run_dir)
    assert r.model.head == "linear_probe"
    b = r.baselines
    assert set(b) == {"chance", "prior", "untrained", "linear_probe", "verdict"}
    assert "metrics" in b["untrained"], b["untrained"]
    assert b["linear_probe"]["n_train"] > 0
    # The run IS a logistic-regression probe on the same frozen features: the baseline probe
    # scores about what the run scores.
    assert b["linear_probe"]["metrics"]["macro_auroc"]["value"] == pytest.approx(
        r.classification["macro_auroc"]["value"], abs=0.2
    )
    md = render_markdown(r)
    assert "## Classification by the linear-probe head" in md
    assert "Zero-shot classification" not in md
    assert "## How this compares" in md and b["verdict"] in md
    again = type(r).from_json(r.to_json(), "metrics.json")
    assert again.baselines == r.to_json()["baselines"] and again.model.head == "linear_probe"


def test_verdict_when_a_probe_matches_the_model_within_its_ci():
    """NEU-DET measured: LoRA 0.985 [0.967, 0.996] vs probe 0.996: a match, not a defeat."""
    from domainclip.evaluation.baselines import disqualifies

    model = {
        "accuracy": {"value": 0.985, "ci95": [0.967, 0.996]},
        "balanced_accuracy": {"value": 0.985, "ci95": [0.967, 0.996]},
        "macro_auroc": {"value": 1.0, "ci95": [1.0, 1.0]},
    }
    v = comparison_verdict(model, _baselines(0.996), False)
    assert v.startswith("A linear probe on the frozen image features does as well as this model")
    assert "accuracy 0.996 vs 0.985" in v and "within the model's 95% CI" in v
    assert not disqualifies(v)
    assert disqualifies(comparison_verdict({**model, "accuracy": {"value": 0.6, "ci95": [0.55, 0.65]}}, _baselines(0.996), False))
