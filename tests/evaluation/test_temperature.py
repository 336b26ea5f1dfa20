"""Temperature scaling: fitting, effect on held-out data, and the run's calibration.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from domainclip.calibrators import (
    apply_temperature,
    fit_temperature,
    load_calibration,
    load_temperature,
    nll_from_logits,
    save_calibration,
)
from domainclip.errors import ConfigError
from domainclip.evaluation.calibration import expected_calibration_error


def _overconfident(n, c, seed, factor):
    """Labels drawn from softmax(z) (calibrated at T=1); the model reports factor * z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 1.5
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    return factor * z, y


def test_fit_recovers_temperature_and_improves_held_out_nll_and_ece():
    val_logits, val_y = _overconfident(3000, 5, 0, factor=3.0)
    test_logits, test_y = _overconfident(3000, 5, 1, factor=3.0)
    t = fit_temperature(val_logits, val_y)
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(test_logits, t)
    assert nll_from_logits(scaled, test_y) < 0.8 * nll_from_logits(test_logits, test_y)
    p0 = torch.softmax(test_logits.double(), -1).numpy()
    p1 = torch.softmax(scaled.double(), -1).numpy()
    ece0 = expected_calibration_error(p0, test_y.numpy())
    ece1 = expected_calibration_error(p1, test_y.numpy())
    assert ece1 < 0.5 * ece0 and ece1 < 0.04
    assert torch.equal(scaled.argmax(1), test_logits.argmax(1))  # accuracy unchanged


def test_fit_is_the_nll_minimum():
    logits, y = _overconfident(500, 4, 2, factor=0.5)  # under-confident: T < 1
    t = fit_temperature(logits, y)
    assert t < 1.0
    best = nll_from_logits(logits / t, y)
    for other in (t * 0.9, t * 1.1):
        assert nll_from_logits(logits / other, y) > best


def test_multi_label_temperature_improves_held_out_bce():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, 3, generator=g) * 2
    y = (torch.rand(4000, 3, generator=g) < torch.sigmoid(z)).long()
    t = fit_temperature(4 * z[:2000], y[:2000], multi_label=True)
    assert t == pytest.approx(4.0, rel=0.1)
    held = 4 * z[2000:]
    assert nll_from_logits(held / t, y[2000:], True) < nll_from_logits(held, y[2000:], True)


def test_calibration_json_round_trip_and_defaults(tmp_path):
    assert load_temperature(tmp_path) == 1.0 and load_calibration(tmp_path) is None
    assert load_temperature(None) == 1.0
    path = save_calibration(tmp_path, {"temperature": 1.7, "split": "val", "n": 30})
    data = json.loads(path.read_text())
    assert data["split"] == "val" and "created" in data
    assert load_temperature(tmp_path) == 1.7
    assert not list(tmp_path.glob(".calibration.json.*"))  # no temp files left behind


@pytest.mark.parametrize("content", ["{not json", '{"temperature": -1}', '{"t": 2}', "[1, 2]"])
def test_broken_calibration_json_is_a_clear_error(tmp_path, content):
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(ConfigError, match="calibration.json.*--fit-temperature"):
        load_temperature(tmp_path)


def test_bad_temperatures_rejected():
    with pytest.raises(ConfigError):
        apply_temperature(torch.zeros(2, 2), 0.0)
    with pytest.raises(ConfigError):
        apply_temperature(torch.zeros(2, 2), float("nan"))
    with pytest.raises(ConfigError):
        save_calibration("/tmp", {"temperature": "2"})
    with pytest.raises(ConfigError):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert np.isclose(apply_temperature(torch.tensor([2.0, 4.0]), 2.0).tolist(), [1.0, 2.0]).all()


def test_perfectly_separated_validation_keeps_t_equal_one():
    """All-correct val data: NLL falls forever as T -> 0; fitting must not deploy T at the bound."""
    import torch

    from domainclip.calibrators import fit_temperature

    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    logits = torch.randn(40, 4, generator=g)
    logits[torch.arange(40), y] += 6.0  # every argmax right
    assert (logits.argmax(1) == y).all()
    assert fit_temperature(logits, y) == 1.0
    # One mistake makes the NLL bounded again: a real fit (T > the search bound).
    logits[0] = torch.tensor([0.0, 8.0, 0.0, 0.0])
    t = fit_temperature(logits, y)
    assert t != 1.0 and t > 0.01
