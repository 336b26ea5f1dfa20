"""Calibrator kinds beyond temperature: bias (vector / Platt scaling), isotonic, auto; records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from domainclip.calibrators import (
    BiasCalibrator,
    CalibrationError,
    IsotonicCalibrator,
    fit_bias,
    fit_calibrator,
    fit_isotonic,
    load_calibrator,
    nll_from_logits,
    save_calibration,
    select_calibrator,
)
from domainclip.calibrators.base import from_record
from domainclip.evaluation.calibration import expected_calibration_error


def _offset_single(n, seed, shift=(1.5, 0.0, 0.0, -1.5), factor=3.0):
    """Labels from softmax(z + shift); the model reports factor * z (over-confident, offset)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g) * 1.5
    y = torch.multinomial(torch.softmax(z + torch.tensor(shift), -1), 1, generator=g).squeeze(1)
    return factor * z, y


def _offset_multi(n, seed):
    """Findings present with probability sigmoid(z - 2.5) (rare); the model reports z (~0.5)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g) * 2
    y = (torch.rand(n, 3, generator=g) < torch.sigmoid(z - 2.5)).long()
    return z, y


def test_bias_recovers_vector_scaling_and_beats_temperature_on_held_out_data():
    z, y = _offset_single(4000, 0)
    cal = fit_bias(z, y)
    t = 1.0 / cal.scale[0]
    b = np.array(cal.bias) - np.mean(cal.bias)
    assert t == pytest.approx(3.0, rel=0.1)
    assert b == pytest.approx([1.5, 0, 0, -1.5], abs=0.2)
    zt, yt = _offset_single(4000, 1)
    temp = fit_calibrator("temperature", z, y)
    assert nll_from_logits(cal.calibrate(zt), yt) < nll_from_logits(temp.calibrate(zt), yt) - 0.02


def test_platt_per_finding_removes_a_base_rate_offset_and_keeps_auroc():
    z, y = _offset_multi(3000, 0)
    zt, yt = _offset_multi(3000, 1)
    temp, platt = fit_calibrator("temperature", z, y, True), fit_bias(z, y, True)
    ece = {
        name: expected_calibration_error(c.probabilities(zt, True), yt.numpy(), multi_label=True)
        for name, c in (("temperature", temp), ("bias", platt))
    }
    assert ece["bias"] < 0.02 < ece["temperature"]
    p = platt.probabilities(zt, True)
    for j in range(3):
        assert roc_auc_score(yt[:, j], p[:, j]) == pytest.approx(roc_auc_score(yt[:, j], zt[:, j]))
    assert all(a > 0 for a in platt.scale)


def test_isotonic_matches_sklearn_and_is_strictly_monotone_per_finding():
    z, y = _offset_multi(500, 0)
    cal = fit_isotonic(z, y, True)
    zt, _ = _offset_multi(200, 1)
    p = cal.probabilities(zt, True)
    for j in range(3):
        ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z[:, j].numpy(), y[:, j].numpy())
        assert p[:, j] == pytest.approx(ref.predict(zt[:, j].numpy()), abs=5e-6)
        order = np.argsort(zt[:, j].numpy())
        assert np.all(np.diff(p[order, j]) > 0)  # the tie-breaker keeps the ranking


def test_isotonic_single_label_is_renormalised():
    z, y = _offset_single(600, 0)
    p = fit_isotonic(z, y).probabilities(z, False)
    assert p.sum(1) == pytest.approx(np.ones(len(p)))
    assert expected_calibration_error(p, y.numpy()) < expected_calibration_error(
        torch.softmax(z.double(), -1).numpy(), y.numpy()
    )


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("kind", ["temperature", "bias", "isotonic"])
def test_records_round_trip_through_calibration_json(tmp_path, kind, multi):
    z, y = _offset_multi(200, 0) if multi else _offset_single(200, 0)
    cal = fit_calibrator(kind, z, y, multi)
    cal.fit = {"split": "val", "n": 200, "manifest": "m.csv"}
    save_calibration(tmp_path, cal)
    back = load_calibrator(tmp_path)
    assert type(back) is type(cal) and back.kind == kind
    assert back.fit["split"] == "val" and back.fit["n"] == 200 and back.fit["manifest"] == "m.csv"
    assert torch.allclose(back.calibrate(z.double()), cal.calibrate(z.double()))


def test_auto_picks_the_lowest_cv_nll_and_says_why():
    z, y = _offset_single(600, 0)
    cal, sel = select_calibrator(z, y)
    assert sel["chosen"] == cal.kind == min(("temperature", "bias", "isotonic"), key=sel["cv_nll"].get)
    assert cal.kind == "bias"  # the data have a per-class offset
    assert sel["cv_nll"]["none"] > sel["cv_nll"]["bias"]
    assert "lowest 5-fold cross-validated NLL" in sel["reason"] and "bias" in sel["reason"]


@pytest.mark.parametrize(
    "record",
    [
        {"kind": "bias", "mode": "single_label", "temperature": 1.0},
        {"kind": "bias", "mode": "multi_label", "scale": [1.0], "bias": [0.0, 1.0]},
        {"kind": "bias", "mode": "multi_label", "scale": [-1.0], "bias": [0.0]},
        {"kind": "isotonic", "mode": "single_label", "x": [[0.0, 1.0]], "y": [[0.0]]},
        {"kind": "isotonic", "x": [[0.0]], "y": [[0.0]]},
        {"kind": "histogram"},
    ],
)
def test_bad_records_are_clear_errors(record):
    with pytest.raises(CalibrationError, match="calibration.json"):
        from_record(record, "RUN/calibration.json")


def test_wrong_number_of_classes_is_a_clear_error():
    cal = BiasCalibrator([1.0] * 3, [0.0] * 3, True)
    with pytest.raises(CalibrationError, match="fitted on 3 classes"):
        cal.calibrate(torch.zeros(2, 4))
    iso = IsotonicCalibrator([[0.0, 1.0]] * 2, [[0.1, 0.9]] * 2, True)
    with pytest.raises(CalibrationError, match="fitted on 2 classes"):
        iso.calibrate(torch.zeros(2, 3))
