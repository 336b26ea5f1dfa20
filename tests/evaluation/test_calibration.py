"""Calibration metrics against torchmetrics and hand computations; reliability plots; subgroups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from domainclip.evaluation.calibration import (
    bootstrap_ece_by_subgroup,
    brier_score,
    calibration_report,
    confidence_and_correct,
    expected_calibration_error,
    max_calibration_error,
    negative_log_likelihood,
    plot_reliability,
    reliability_bins,
)


def _random_probs(rng, n, c, scale):
    z = rng.normal(size=(n, c)) * scale
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_mce_equal_torchmetrics_multiclass(seed, n_bins):
    rng = np.random.default_rng(seed)
    p = _random_probs(rng, 400, 5, scale=1 + seed)
    y = rng.integers(0, 5, 400)
    for norm, ours in (("l1", expected_calibration_error), ("max", max_calibration_error)):
        ref = MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm=norm)(
            torch.tensor(p), torch.tensor(y)
        )
        assert ours(p, y, n_bins) == pytest.approx(float(ref), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_ece_equals_torchmetrics_binary_on_every_entry(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((150, 4)) ** 2
    y = (rng.random((150, 4)) < 0.3).astype(int)
    ref = BinaryCalibrationError(n_bins=10, norm="l1")(
        torch.tensor(p.reshape(-1)), torch.tensor(y.reshape(-1))
    )
    assert expected_calibration_error(p, y, 10, multi_label=True) == pytest.approx(
        float(ref), abs=1e-6
    )


def _equal_mass_reference(conf, correct, n_bins):
    """Independent reference: sort, give the first N % B bins one extra item, average the gaps."""
    pairs = sorted(zip(conf.tolist(), correct.tolist(), strict=True), key=lambda t: t[0])
    n = len(pairs)
    sizes = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
    ece, start = 0.0, 0
    for size in sizes:
        chunk = pairs[start : start + size]
        start += size
        if chunk:
            gap = abs(sum(c for _, c in chunk) / len(chunk) - sum(p for p, _ in chunk) / len(chunk))
            ece += len(chunk) / n * gap
    return ece


@pytest.mark.parametrize("n", [7, 100, 333])
def test_equal_mass_ece_matches_independent_reference(n):
    rng = np.random.default_rng(n)
    p = _random_probs(rng, n, 3, scale=2.0)
    y = rng.integers(0, 3, n)
    conf, corr = confidence_and_correct(p, y)
    bins = reliability_bins(conf, corr, 10, "mass")
    assert bins.ece() == pytest.approx(_equal_mass_reference(conf, corr, 10), abs=1e-12)
    assert expected_calibration_error(p, y, 10, "mass") == pytest.approx(bins.ece())
    nonempty = bins.count[bins.count > 0]
    assert nonempty.max() - nonempty.min() <= 1 and bins.count.sum() == n


def test_brier_and_nll_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    y = np.array([0, 2])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 ; (0.1^2 + 0.6^2 + 0.7^2) = 0.86 ; mean 0.5
    assert brier_score(p, y) == pytest.approx(0.5)
    assert negative_log_likelihood(p, y) == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2)
    pm = np.array([[0.9, 0.2], [0.4, 0.5]])
    ym = np.array([[1, 0], [1, 1]])
    assert brier_score(pm, ym, multi_label=True) == pytest.approx((0.01 + 0.04 + 0.36 + 0.25) / 4)
    assert negative_log_likelihood(pm, ym, multi_label=True) == pytest.approx(
        -(np.log(0.9) + np.log(0.8) + np.log(0.4) + np.log(0.5)) / 4
    )
    # a confident miss costs a large but finite NLL
    assert np.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))


def test_ece_by_hand_and_perfect_calibration_is_zero():
    # two bins of [0,0.5) and [0.5,1]: confidences 0.6 (right), 0.8 (wrong), 0.9 (right)
    conf = np.array([0.6, 0.8, 0.9])
    corr = np.array([1.0, 0.0, 1.0])
    bins = reliability_bins(conf, corr, 2)
    assert bins.count.tolist() == [0, 3]
    assert bins.ece() == pytest.approx(abs(2 / 3 - (0.6 + 0.8 + 0.9) / 3))
    # outcomes drawn from the stated probabilities: ECE shrinks towards 0 with many samples
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.0, 200_000)
    assert reliability_bins(c, (rng.random(c.size) < c).astype(float), 10).ece() < 0.01


def test_calibration_report_and_reliability_png(tmp_path):
    rng = np.random.default_rng(5)
    p = _random_probs(rng, 300, 4, 3.0)
    y = rng.integers(0, 4, 300)
    rep = calibration_report(p, y, n_bins=12, n_boot=100)
    assert rep["ece"]["value"] == pytest.approx(expected_calibration_error(p, y, 12))
    assert rep["nll"]["value"] == pytest.approx(negative_log_likelihood(p, y))
    assert len(rep["bins_width"]["count"]) == 12 and sum(rep["bins_width"]["count"]) == 300
    for k in ("ece", "ece_mass", "mce", "brier", "nll"):
        assert rep[k]["ci95"][0] < rep[k]["ci95"][1]
    out = plot_reliability(
        reliability_bins(*confidence_and_correct(p, y), 12), tmp_path / "r" / "rel.png"
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_bootstrap_ece_by_subgroup_equals_ece_on_each_subset():
    rng = np.random.default_rng(6)
    p = _random_probs(rng, 200, 3, 2.0)
    y = rng.integers(0, 3, 200)
    view = rng.choice(["PA", "AP", ""], 200).tolist()
    out = bootstrap_ece_by_subgroup(p, y, {"view": view}, n_bins=10, n_boot=50, min_count=5)
    v = np.array(view)
    for key, sel in (("PA", v == "PA"), ("AP", v == "AP"), ("(missing)", v == "")):
        assert out["view"][key]["n"] == int(sel.sum())
        assert out["view"][key]["ece"]["value"] == pytest.approx(
            expected_calibration_error(p[sel], y[sel], 10)
        )
    tiny = bootstrap_ece_by_subgroup(
        p[:6], y[:6], {"sex": ["F", "F", "F", "F", "F", "M"]}, min_count=2, n_boot=10
    )
    assert (
        tiny["sex"]["M"]["ece"]["value"] is None
        and "only 1 images" in tiny["sex"]["M"]["ece"]["reason"]
    )


def test_base_rate_offset_is_reported_and_survives_temperature():
    """Multi-label pos/neg prompt pairs centred at p=0.5 on rare findings (covid-cxr's case):
    no temperature brings the mean probability down to the positive rate, and the report says so.
    """
    from domainclip.calibrators import fit_temperature
    from domainclip.evaluation.report import _base_rate_note

    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < 0.08).astype(int)  # rare findings
    logits = rng.normal(size=(400, 5)) + 0.8 * y  # informative but centred at 0 (p ~ 0.5)
    t = fit_temperature(torch.tensor(logits), torch.tensor(y), multi_label=True)
    probs = 1 / (1 + np.exp(-logits / t))
    rep = calibration_report(probs, y, multi_label=True, n_boot=0)
    assert rep["observed_rate"] == pytest.approx(y.mean())
    assert rep["mean_confidence"] == pytest.approx(probs.mean())
    assert rep["mean_confidence"] - rep["observed_rate"] > 0.2  # T alone cannot shift the logits
    note = _base_rate_note({"before": rep, "after": None}, multi=True)
    assert note and "cannot shift" in note[-1] and f"{y.mean():.3f}" in note[-1]

    shifted = 1 / (1 + np.exp(-(logits - 3.0)))  # with a bias term the offset disappears
    ok = calibration_report(shifted, y, multi_label=True, n_boot=0)
    assert abs(ok["mean_confidence"] - ok["observed_rate"]) < 0.1
    assert _base_rate_note({"before": ok, "after": None}, multi=True) == []


def test_base_rate_note_only_for_multi_label_and_finite_gaps():
    from domainclip.evaluation.report import _base_rate_note

    gap = {"mean_confidence": 0.9, "observed_rate": 0.5}
    assert _base_rate_note({"before": gap, "after": None}, multi=False) == []
    nan = {"mean_confidence": float("nan"), "observed_rate": 0.5}
    assert _base_rate_note({"before": nan, "after": None}, multi=True) == []
    assert _base_rate_note({"before": {}, "after": None}, multi=True) == []  # older metrics.json
