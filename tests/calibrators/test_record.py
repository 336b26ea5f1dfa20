"""The calibration record without torch: probabilities of every kind equal the torch calibrator's,
the one conformal reader (current and early record forms), the referral rule."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from domainclip.calibrators import (
    CalibrationError,
    fit_calibrator,
    record_probabilities,
    referral_rule,
)
from domainclip.calibrators.base import from_record
from domainclip.calibrators.conformal import fit_conformal, stored_thresholds
from domainclip.deploy.output import DecisionRules, InputItem, score_rows
from domainclip.evaluation.selective import referral_rule as fit_referral_rule


def _data(multi: bool, n: int = 300, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2
    if multi:
        y = (torch.rand(n, c, generator=g) < torch.sigmoid(z - 2)).long()
    else:
        y = torch.multinomial(torch.softmax(z + torch.tensor([1.0, 0, 0, -1.0]), -1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("kind", ["temperature", "bias", "isotonic"])
def test_record_probabilities_equal_the_torch_calibrator(kind, multi):
    z, y = _data(multi)
    cal = fit_calibrator(kind, z, y, multi)
    record = cal.to_record()
    zt, _ = _data(multi, n=50, seed=1)
    zt = zt * 3  # outside the fitted range too (isotonic clips)
    want = from_record(record, "test").probabilities(zt, multi)
    got = record_probabilities(record, zt.numpy(), multi)
    assert got.shape == (50, 4)
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert not np.allclose(got, record_probabilities(None, zt.numpy(), multi))  # it did calibrate


def test_record_probabilities_refuses_a_width_mismatch():
    z, y = _data(False)
    record = fit_calibrator("bias", z, y).to_record()
    with pytest.raises(CalibrationError, match="4 entries but the logits have 3"):
        record_probabilities(record, np.zeros((2, 3)), False, "x/calibration.json")


def test_stored_thresholds_reads_the_current_and_the_early_form():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 2])
    thr = fit_conformal(probs, labels, 0.2, "aps")
    back = stored_thresholds({"kind": "temperature", "temperature": 1.0, "conformal": thr.to_dict()})
    assert back == thr
    early = stored_thresholds({"temperature": 1.0, "conformal": {"threshold": 0.7}})
    assert early.method == "lac" and early.threshold == 0.7 and math.isnan(early.alpha)
    # LAC: a class is in the set when 1 - p <= q, i.e. p >= 0.3
    assert early.predict_sets(probs).tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    assert stored_thresholds({"temperature": 1.0}) is None and stored_thresholds(None) is None


@pytest.mark.parametrize(
    ("conf", "match"),
    [([0.1], "must be a JSON object"), ({"method": "nope", "alpha": 0.1, "n": 3}, "unknown conformal method"),
     ({"threshold": "x"}, "no numeric threshold"), ({"method": "lac"}, "malformed"),
     ({"method": "crc_fnr", "alpha": 0.1, "n": 3, "mondrian": True}, "per-class thresholds")],
)
def test_stored_thresholds_bad_entries_are_clear_errors(conf, match):
    with pytest.raises(CalibrationError, match=match) as err:
        stored_thresholds({"conformal": conf}, "RUN/calibration.json")
    assert "RUN/calibration.json" in str(err.value) and "--conformal ALPHA" in str(err.value)


def test_referral_rule_by_hand_and_in_rows():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 0])  # errors: the 0.7 one
    rule = fit_referral_rule(probs, labels, False, 0.0, "val")
    assert rule["min_confidence"] == 0.8 and rule["refer_rate"] == 0.5 and rule["n"] == 4
    assert fit_referral_rule(probs, labels, False, 0.25, "val")["min_confidence"] == 0.6
    record = {"kind": "temperature", "temperature": 1.0, "selective": rule,
              "conformal": fit_conformal(probs, labels, 0.5, "lac").to_dict()}
    assert referral_rule(record) == rule
    rows = score_rows([InputItem(i, f"/i{i}.png") for i in range(4)], probs, ["a", "b"], False, 0.0,
                      DecisionRules(record))
    assert [r["refer"] for r in rows] == [False, False, True, True]
    assert all(r["needs_review"] == (r["refer"] or r["prediction_set"].count("|") > 0) for r in rows)
    with pytest.raises(CalibrationError, match="min_confidence"):
        referral_rule({"selective": {"target_error": 0.05}})


def test_multi_label_sets_are_the_findings_above_their_thresholds():
    probs = np.array([[0.9, 0.3, 0.05], [0.2, 0.6, 0.5]])
    record = {"kind": "temperature", "temperature": 1.0, "conformal": {
        "method": "crc_fnr", "alpha": 0.1, "n": 10, "mondrian": True, "per_class": [0.5, 0.25, 0.4]}}
    rows = score_rows([InputItem(0, "/a"), InputItem(1, "/b")], probs, ["x", "y", "z"], True, 0.0,
                      DecisionRules(record))
    assert [r["prediction_set"] for r in rows] == ["x|y", "y|z"]
    assert [r["predicted"] for r in rows] == ["x", "y|z"]
    assert [r["needs_review"] for r in rows] == [True, False]  # y flagged but not predicted


def test_record_and_conformal_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from domainclip.calibrators.record import record_probabilities\n"
            "from domainclip.calibrators.conformal import stored_thresholds\n"
            "import domainclip.deploy.output\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
