"""`evaluate --calibrate KIND --conformal ALPHA`: records, the test-split guard, the calib split,
coverage checked against a direct computation, and validity by simulation on the synthetic set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domainclip.calibrators import BiasCalibrator, load_calibrator
from domainclip.calibrators.conformal import ConformalThresholds, fit_conformal
from domainclip.cli import main
from domainclip.datasets.importers.synthetic import generate_synthetic
from domainclip.datasets.manifest import read_manifest
from domainclip.errors import ConfigError
from domainclip.evaluation.evaluate import evaluate
from domainclip.evaluation.results import EvaluationResult
from domainclip.evaluation.task import ZeroShotTask, resolve_classes
from domainclip.evaluation.uncertainty import split_scores
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone
from domainclip.runs import resolve_model
from domainclip.scoring.prompts import load_prompt_set

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return save_backbone(
        tiny_open_clip_backbone("cnn", seed=2), tmp_path_factory.mktemp("bb") / "backbone"
    )


def _scores(backbone: Path, manifest: Path, split: str):
    resolved = resolve_model(str(backbone), device="cpu")
    man, ps = read_manifest(manifest), load_prompt_set(PROMPTS)
    task = ZeroShotTask.build(resolved.backbone, ps, resolve_classes(ps, man))
    return split_scores(resolved, man, task, split, skip_uncovered=False)


def test_calibrate_bias_and_conformal_sets(tmp_path, backbone, synthetic_manifest, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", str(backbone), "--data", str(synthetic_manifest), "--prompts", str(PROMPTS)]
    rc = main([*args, "--out", str(out), "--calibrate", "bias", "--conformal", "0.1",
                 "--conformal-method", "aps", "--n-boot", "20"])
    assert rc == 0
    assert "conformal (aps, target 0.90)" in capsys.readouterr().out
    m = EvaluationResult.read(out / "metrics.json")
    record = json.loads((out / "calibration.json").read_text())
    assert record["kind"] == "bias" and record["split"] == "val" and record["n"] == 12
    assert record["manifest"] == str(synthetic_manifest) and len(record["bias"]) == 5
    assert m.temperature.kind == "bias" and m.temperature.source == "fitted"
    assert record["conformal"] == m.conformal["thresholds"]
    # coverage, set sizes: the stored thresholds applied directly to the calibrated test scores
    cal = load_calibrator(out)
    assert isinstance(cal, BiasCalibrator)
    test = _scores(backbone, synthetic_manifest, "test")
    sets = ConformalThresholds.from_dict(record["conformal"]).predict_sets(
        cal.probabilities(test.logits, False)
    )
    covered = sets[np.arange(test.n), test.y]
    assert m.conformal["coverage"]["value"] == pytest.approx(covered.mean())
    assert m.conformal["mean_set_size"] == pytest.approx(sets.sum(1).mean())
    assert sum(m.conformal["set_sizes"].values()) == test.n == m.data.n_evaluated
    lo, hi = m.conformal["coverage"]["ci95"]
    assert lo <= covered.mean() <= hi
    # the calibrator was fitted on val, so the thresholds are the APS quantile of val's out-of-fold
    # probabilities: each fold through a bias calibrator fitted on the other four
    from domainclip.calibrators import fit_calibrator
    from domainclip.calibrators.select import cv_folds

    val = _scores(backbone, synthetic_manifest, "val")
    oof = np.zeros((val.n, 5))
    for held in cv_folds(val.y, False, 5, 0):
        rest = np.setdiff1d(np.arange(val.n), held)
        part = fit_calibrator("bias", val.logits[rest], torch.as_tensor(val.y[rest]), False)
        oof[held] = part.probabilities(val.logits[held], False)
    direct = fit_conformal(oof, val.y, 0.1, "aps")
    assert m.conformal["thresholds"]["threshold"] == pytest.approx(direct.threshold)
    assert m.conformal["thresholds"]["cross_fitted"] == 5
    sel = m.selective
    assert sel["coverage"][-1] == 1.0 and sel["risk"][-1] == pytest.approx(1 - m.classification["accuracy"]["value"])
    assert sel["aurc_optimal"] <= sel["aurc"] + 1e-12
    report = (out / "report.md").read_text()
    assert "## Conformal prediction sets" in report and "## Selective prediction" in report
    assert "5-fold cross-fitted probabilities" in report
    assert (out / "risk_coverage.png").is_file()
    # the dashboard's calibration page reads this result (bias calibrator, conformal section)
    from domainclip.dashboard.calibdata import calibration_table, reliability_frame

    assert len(calibration_table(m.calibration)) >= 4 and len(reliability_frame(m.calibration)) > 0


@pytest.mark.parametrize("kind", ["temperature", "isotonic", "auto"])
def test_every_kind_is_fitted_on_val_and_recorded(tmp_path, backbone, synthetic_manifest, kind):
    m = evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, tmp_path, calibrate=kind,
                 n_boot=0, write=False)
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert record["split"] == "val" and record["n"] == 12
    assert m["temperature"]["kind"] == record["kind"]
    if kind == "auto":
        sel = record["selection"]
        assert record["kind"] == sel["chosen"] and sel["chosen"] in sel["reason"]
        assert set(sel["cv_nll"]) == {"none", "temperature", "bias", "isotonic"}
    else:
        assert record["kind"] == kind


def test_calibrators_and_thresholds_are_never_fitted_on_test(tmp_path, backbone, synthetic_manifest):
    for options in ({"calibrate": "bias"}, {"conformal": 0.1}, {"fit_temperature": True}):
        with pytest.raises(ConfigError, match="must not be fitted on the test split"):
            evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, tmp_path, val_split="test",
                     n_boot=0, write=False, **options)
    assert not (tmp_path / "calibration.json").exists()


def test_conformal_thresholds_come_from_a_calib_split(tmp_path, backbone, synthetic_manifest):
    rows = list(csv.DictReader(synthetic_manifest.open()))
    for r in rows[::2]:
        if r["split"] == "val":
            r["split"] = "calib"
    man = synthetic_manifest.parent / "with_calib.csv"
    with man.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n_calib = sum(r["split"] == "calib" for r in rows)
    m = evaluate(str(backbone), man, "test", PROMPTS, tmp_path, calibrate="temperature",
                 conformal=0.2, conformal_method="lac", mondrian=True, n_boot=0, write=False)
    t = m["conformal"]["thresholds"]
    assert t["split"] == "calib" and t["n"] == n_calib and t["mondrian"] and t["method"] == "lac"
    assert len(t["per_class"]) == 5 and m["conformal"]["worst_class"] in m["prompts"]["classes"]


def test_old_metrics_without_conformal_read(tmp_path, backbone, synthetic_manifest):
    m = evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, tmp_path, n_boot=0, write=False)
    for key in ("conformal", "selective"):
        m.pop(key, None)
    for key in ("kind", "description"):
        m["temperature"].pop(key, None)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    r = EvaluationResult.read(tmp_path / "metrics.json")
    assert r.conformal is None and r.selective is None and r.temperature.describe().startswith("temperature")


@pytest.fixture(scope="module")
def pooled(tmp_path_factory, backbone):
    """Calibrated val + test probabilities of a 400-image synthetic set (240 pooled)."""
    out = tmp_path_factory.mktemp("syn400")
    man = generate_synthetic(out, n=400, size=64, seed=3, val_frac=0.3, test_frac=0.3).manifest_path
    val, test = _scores(backbone, man, "val"), _scores(backbone, man, "test")
    z = torch.cat([val.logits, test.logits]).double()
    return torch.softmax(z / z.std(), -1).numpy(), np.concatenate([val.y, test.y])


def _resplits(probs, y, method, randomized, mondrian=False):
    """Coverage of each of 200 random calibration/test halves, and its worst class."""
    rng = np.random.default_rng(0)
    cov, worst = [], []
    for i in range(200):
        perm = rng.permutation(len(y))
        cal, test = perm[: len(y) // 2], perm[len(y) // 2 :]
        t = fit_conformal(probs[cal], y[cal], 0.1, method, mondrian, randomized=randomized, seed=i)
        hit = t.predict_sets(probs[test])[np.arange(len(test)), y[test]]
        cov.append(hit.mean())
        worst.append(min(hit[y[test] == c].mean() for c in np.unique(y[test])))
    return np.mean(cov), np.mean(worst)


@pytest.mark.parametrize(("method", "randomized"), [("lac", False), ("aps", True), ("raps", True)])
def test_coverage_is_valid_over_200_resplits_of_the_synthetic_set(pooled, method, randomized):
    """Mean coverage over 200 random calibration/test halves within 1.5 points of 1 - alpha."""
    cov, _ = _resplits(*pooled, method, randomized)
    assert abs(cov - 0.9) <= 0.015


def test_non_randomised_aps_is_conservative_and_mondrian_covers_every_class(pooled):
    cov, _ = _resplits(*pooled, "aps", False)
    assert cov >= 0.9 - 0.015  # valid, but ties at score 1 make it over-cover
    cov_m, worst = _resplits(*pooled, "lac", False, mondrian=True)
    assert abs(cov_m - 0.9) <= 0.03 and worst >= 0.8


def test_multi_label_platt_and_fnr_control(tmp_path, backbone, synthetic_manifest):
    prompts = {
        "version": "syn-ml-1",
        "mode": "multi_label",
        "templates": {
            "positive": ["a metal surface with {label}"],
            "negative": ["a metal surface without {label}"],
        },
        "classes": {"scratch": None, "pit": None, "crack": None, "patch": None},
        "negative_labels": ["clean"],
    }
    m = evaluate(str(backbone), synthetic_manifest, "test", prompts, tmp_path, calibrate="bias",
                 conformal=0.2, n_boot=0, write=False)
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert record["kind"] == "bias" and record["mode"] == "multi_label" and len(record["scale"]) == 4
    c = m["conformal"]
    assert c["thresholds"]["method"] == "crc_fnr" and len(c["thresholds"]["per_class"]) == 4
    assert c["unit"] == "present findings"
    n_pos = sum(v["n"] for v in c["per_class"].values())
    assert n_pos == sum(m["classification"]["per_class"][k]["n_pos"] for k in c["per_class"])
    assert m["selective"]["n_decisions"] == 4 * m["data"]["n_evaluated"]


def test_an_evaluation_that_writes_nothing_never_saves_a_calibrator(tmp_path, monkeypatch, backbone, synthetic_manifest):
    """No output folder for a plain backbone (e.g. the untrained baseline inside an evaluation): the calibrator is
    fitted and used, but no calibration.json lands in the working directory (a demo run once left
    one there)."""
    monkeypatch.chdir(tmp_path)
    m = evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, None, calibrate="temperature",
                 write=False, n_boot=0, baselines=False)
    assert m["temperature"]["source"] == "fitted" and "file" not in m["temperature"]
    assert list(tmp_path.iterdir()) == []


def _separated(rng, n, c=4):
    """Logits [n, c] with the true class 4 standard deviations ahead, and labels [n]."""
    y = rng.integers(0, c, n)
    z = rng.normal(0, 1, (n, c))
    z[np.arange(n), y] += 4.0
    return torch.tensor(z), y


def test_cross_fitted_thresholds_keep_coverage_where_in_sample_ones_lose_it():
    """An isotonic map fitted on val puts val's true-class probabilities at ~1: thresholds taken
    there in-sample under-cover exchangeable test data; out-of-fold probabilities do not."""
    from domainclip.calibrators import fit_calibrator
    from domainclip.evaluation.uncertainty import SplitScores, held_out_probabilities

    rng = np.random.default_rng(0)
    cov_in, cov_out = [], []
    for trial in range(60):
        zv, yv = _separated(rng, 40)
        zt, yt = _separated(rng, 400)
        cal = fit_calibrator("isotonic", zv, torch.as_tensor(yv), False)
        cal.fit = {"split": "val"}
        p_out, folds = held_out_probabilities(cal, SplitScores("val", zv, yv), False, seed=trial)
        assert folds == 5
        p_test = cal.probabilities(zt, False)
        for p, acc in ((cal.probabilities(zv, False), cov_in), (p_out, cov_out)):
            sets = fit_conformal(p, yv, 0.1, "lac").predict_sets(p_test)
            acc.append(sets[np.arange(len(yt)), yt].mean())
    assert np.mean(cov_in) < 0.88  # measured 0.856
    assert np.mean(cov_out) >= 0.895  # measured 0.919


def test_a_calibrator_fitted_elsewhere_is_applied_as_is():
    from domainclip.calibrators import fit_calibrator
    from domainclip.evaluation.uncertainty import SplitScores, held_out_probabilities

    rng = np.random.default_rng(1)
    zv, yv = _separated(rng, 40)
    cal = fit_calibrator("bias", zv, torch.as_tensor(yv), False)
    cal.fit = {"split": "val"}
    p, folds = held_out_probabilities(cal, SplitScores("calib", zv, yv), False)
    assert folds == 0 and np.allclose(p, cal.probabilities(zv, False))
    few, folds = held_out_probabilities(cal, SplitScores("val", zv[:6], yv[:6]), False)
    assert folds == 0 and np.allclose(few, cal.probabilities(zv[:6], False))  # too few to cross-fit


def test_thresholds_record_the_cross_fitting():
    t = fit_conformal(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 0]), 0.2, "lac", cross_fitted=5)
    assert ConformalThresholds.from_dict(t.to_dict()).cross_fitted == 5
    assert ConformalThresholds.from_dict({k: v for k, v in t.to_dict().items() if k != "cross_fitted"}).cross_fitted == 0
