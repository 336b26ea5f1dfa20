"""The new calibrator kinds through the consumers' interfaces: the run contract and the audit's
score table (the dashboard's reading of such an evaluation: tests/evaluation/test_uncertainty.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainclip.audit.scores import ScoreTable
from domainclip.calibrators import BiasCalibrator, fit_bias, fit_isotonic
from domainclip.runs import Run


def _data(n=120, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2
    y = torch.multinomial(torch.softmax(z + torch.tensor([1.0, 0, -1.0]), -1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("fit", [fit_bias, fit_isotonic])
def test_run_calibration_returns_the_stored_kind(tmp_path, fit):
    (tmp_path / "config.yaml").write_text("backbone:\n  spec: default\n")
    z, y = _data()
    cal = fit(z, y, False)
    run = Run(tmp_path)
    run.save_calibration(cal)
    back = run.calibration()
    assert back.kind == cal.kind and torch.allclose(back.calibrate(z.double()), cal.calibrate(z.double()))
    assert run.calibration(2.0).kind == "temperature"  # a given T still wins


@pytest.mark.parametrize("fit", [fit_bias, fit_isotonic])
def test_audit_score_table_applies_per_class_calibrators_per_framing(fit):
    z, y = _data()
    cal = fit(z, y, False)
    logits = np.stack([z.numpy(), z.numpy() * 0.5])  # [K=2, N, C]
    table = ScoreTable(["a", "b"], ["x", "y", "w"], logits, logits.copy(), cal, y.numpy(),
                       np.eye(3, dtype=bool)[y.numpy()])
    for k in range(2):
        expected = cal.probabilities(torch.from_numpy(logits[k]), False)
        assert table.probs[k] == pytest.approx(expected)


def test_bias_calibrator_repr_in_reports():
    cal = BiasCalibrator([0.5] * 3, [0.1, 0.0, -0.1], False)
    assert cal.describe().startswith("temperature T = 2 + per-class bias")
    assert cal.to_record()["temperature"] == 2.0 and not cal.is_identity
