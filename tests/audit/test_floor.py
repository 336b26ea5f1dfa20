"""Performance floors of the gate and the card's first screen (issue #17): hand-built cases where
the right sentence is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from domainclip.audit import run_audit
from domainclip.audit.card import build_card, write_card
from domainclip.audit.floor import floor_checks, near_chance, performance
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import load_audit_spec
from domainclip.evaluation.baselines import chance_metrics, failing_classes
from domainclip.evaluation.calibration import calibration_report
from domainclip.evaluation.metrics import single_label_report
from domainclip.evaluation.results import (
    CalibrationSummary,
    EvaluatedData,
    EvaluatedModel,
    EvaluationResult,
    PromptsUsed,
    TemperatureUsed,
)
from tests.audit.conftest import small_spec

CLASSES = ["crazing", "inclusion", "patches", "scratches"]


def _table(logits: np.ndarray, target: np.ndarray) -> ScoreTable:
    k = logits[None]
    positives = np.eye(logits.shape[1], dtype=bool)[target]
    return ScoreTable(["neutral"], CLASSES, k, k.copy(), 1.0, target, positives)


def _spec(tmp_path: Path, **thresholds):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(small_spec(**thresholds), sort_keys=False))
    return load_audit_spec(path)


def test_a_chance_level_model_fails_the_floor_and_a_good_one_passes(tmp_path):
    rng = np.random.default_rng(0)
    target = np.repeat(np.arange(4), 25)
    spec = _spec(tmp_path)
    chance = performance(_table(rng.normal(size=(100, 4)), target), "neutral", 400, 0)
    checks = floor_checks(spec, chance)
    assert [c.id for c in checks] == ["performance/balanced_accuracy", "performance/macro_auroc"]
    assert all(c.status == "fail" for c in checks)
    assert "not above the chance CI" in checks[0].message
    assert "cannot do the task" in checks[0].message
    assert near_chance(chance)
    good_logits = rng.normal(size=(100, 4))
    good_logits[np.arange(100), target] += 2.0
    good = performance(_table(good_logits, target), "neutral", 400, 0)
    assert all(c.status == "pass" for c in floor_checks(spec, good))
    assert not near_chance(good)
    # a stated minimum above what the good model reaches fails it too
    strict = _spec(tmp_path, min_macro_auroc=0.99)
    by_id = {c.id: c for c in floor_checks(strict, good)}
    assert by_id["performance/macro_auroc"].status == "fail"
    assert "stated minimum" in by_id["performance/macro_auroc"].message
    off = _spec(tmp_path, performance_floor=False)
    assert floor_checks(off, chance) == []


def test_the_untrained_tiny_model_fails_the_gate_on_the_floor_first(
    tiny_backbone, manifest_path, tmp_path
):
    """A random model is stable under every framing (nothing to move) yet cannot do the task:
    the gate fails, and the floor checks lead the list."""
    spec = small_spec(max_flip_rate=None, max_abs_mean_shift=None)
    res = run_audit(tiny_backbone, spec, manifest_path, split=None, out_dir=tmp_path / "a")
    gate = res.report.gate
    assert gate.verdict == "fail"
    assert gate.checks[0].id == "performance/balanced_accuracy"
    assert set(gate.failed) == {"performance/balanced_accuracy", "performance/macro_auroc"}
    again = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert again["gate"]["thresholds"]["performance_floor"] is True


# ----------------------------------------------------------------------------- hand-built cards


def _metrics(probs: np.ndarray, y: np.ndarray, baselines: dict | None, warnings: list) -> EvaluationResult:
    report = single_label_report(probs, y, CLASSES, n_boot=200)
    cal = calibration_report(probs, y, n_bins=10, n_boot=200)
    return EvaluationResult(
        name="neu_test",
        model=EvaluatedModel(spec="default", family="default", run="RUN", checkpoint="best"),
        data=EvaluatedData("m.csv", "test", len(y), 0, len(y), {}, {}, []),
        prompts=PromptsUsed("p.yaml", "1", "single_label", 4, CLASSES),
        temperature=TemperatureUsed(148.4, "run calibration.json"),
        classification=report,
        calibration=CalibrationSummary(cal, cal, {}),
        retrieval={
            k: {"value": 0.1, "ci95": [0.0, 0.2]}
            for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_median_rank", "t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_median_rank")
        }
        | {"n_images": len(y), "n_texts": len(y)},
        baselines=baselines,
        failing_classes={"min_recall": 0.5, "min_auroc": 0.7, "classes": failing_classes(report, False)},
        warnings=warnings,
    )


def _run_dir(tmp_path: Path, m: EvaluationResult, result: dict) -> Path:
    run = tmp_path / "run"
    (run / "eval" / m.name).mkdir(parents=True)
    cfg = {
        "backbone": {"spec": "default"},
        "method": {"name": "lora", "image_tower": "lora", "text_tower": "frozen"},
        "data": {"manifest": str(tmp_path / "missing.csv")},
        "train": {"max_steps": 300},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "result.json").write_text(json.dumps(result))
    m.write(run / "eval" / m.name / "metrics.json")
    return run


def test_card_of_a_model_worse_than_its_probe_says_so_first(tmp_path):
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 30)
    logits = rng.normal(size=(120, 4))
    logits[np.arange(120), y] += 2.0
    logits[y == 3, 3] -= 10.0  # scratches: never predicted, 0 of 30 right
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probe = rng.normal(size=(120, 4))
    probe[np.arange(120), y] += 6.0
    probe_p = np.exp(probe) / np.exp(probe).sum(1, keepdims=True)
    from domainclip.evaluation.baselines import comparison_verdict

    metrics_of = single_label_report(probe_p, y, CLASSES, n_boot=200)
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_ap")
    baselines = {
        "chance": {"what": "uniform", "metrics": chance_metrics(y, 4, False, 300, 0)},
        "linear_probe": {"what": "probe", "metrics": {k: metrics_of[k] for k in keys}},
    }
    model_report = single_label_report(probs, y, CLASSES, n_boot=200)
    baselines["verdict"] = comparison_verdict(model_report, baselines, False)
    warnings = [{"kind": "temperature_at_bound", "message": "T = 148 at the search bound"}]
    m = _metrics(probs, y, baselines, warnings)
    result = {
        "trainable_params": 1542,
        "total_params": 10000,
        "trainable_fraction": 0.1542,
        "steps": 120,
        "best_step": 40,
        "stopped_early": True,
        "best_metrics": {"zero_shot_acc": 0.6},
        "wall_seconds": 10,
        "warnings": [{"kind": "collapse", "step": 80, "message": "embeddings collapsed"}, "odd"],
    }
    run = _run_dir(tmp_path, m, result)
    path = write_card(run)
    text = path.read_text()
    first_screen = text[: text.index("## Model")]
    assert "## How this compares" in first_screen
    assert "A linear probe on the frozen image features beats this model" in first_screen
    assert "**scratches (failing)**" in first_screen
    assert "**scratches**: recall 0.00 (0 of 30) < 0.5" in first_screen
    assert "## Warnings raised during the run" in first_screen
    assert "Training (step 80): collapse: embeddings collapsed" in first_screen
    assert "T = 148 at the search bound" in first_screen
    assert "Training ran 120 of the configured 300 steps (early stopping)." in text
    assert "best checkpoint, at step 40 of 120" in text
    assert "(not recorded)" not in text
    assert "Not fit for use as it stands" in text
    # calibration from the test split first, validation labelled as such
    cal = text[text.index("## Calibration") :]
    assert cal.index("On the test split") < cal.index("Not run yet: temperature scaling")


def test_card_without_baselines_says_they_are_missing(tmp_path):
    y = np.repeat(np.arange(4), 5)
    probs = np.eye(4)[y] * 0.7 + 0.075
    m = _metrics(probs, y, None, [])
    run = _run_dir(tmp_path, m, {"steps": 300, "best_step": 300})
    blocks = build_card(run)
    texts = [b[1] for b in blocks if b[0] == "p"]
    assert any("No baselines were computed" in t for t in texts)


@pytest.mark.parametrize("field", ["warnings", "baselines", "failing_classes"])
def test_metrics_written_before_baselines_stay_readable(tmp_path, field):
    y = np.repeat(np.arange(4), 5)
    probs = np.eye(4)[y] * 0.7 + 0.075
    data = _metrics(probs, y, None, []).to_json()
    data.pop(field, None)
    again = EvaluationResult.from_json(data, "old/metrics.json")
    assert again.baselines is None and again.warnings == []
