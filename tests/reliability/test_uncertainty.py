"""Reliability: `evaluate --calibrate/--conformal` refuse test data and bad values clearly;
a damaged calibration record of a new kind is a clear error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone
from tests.reliability.harness import Case, run_case

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


def _setup(tmp: Path) -> list[str]:
    bb = save_backbone(tiny_open_clip_backbone("cnn", seed=2), tmp / "bb")
    man = generate_synthetic(tmp / "syn", n=20, size=32, seed=0, val_frac=0.3, test_frac=0.3).manifest_path
    return ["evaluate", str(bb), "--data", str(man), "--prompts", str(PROMPTS), "--out", str(tmp / "ev"),
            "--n-boot", "0", "--no-shortcut-check"]


def _broken_record(tmp: Path) -> list[str]:
    """A bias record without its vectors (the CLI step only shows help; `check` loads the record
    the way every command does, through `load_calibrator`)."""
    (tmp / "calibration.json").write_text(json.dumps({"kind": "bias", "mode": "multi_label"}))
    return ["evaluate", "--help"]


def _check_broken(tmp: Path, _outcome) -> None:
    from domainclip.calibrators import CalibrationError, load_calibrator

    with pytest.raises(CalibrationError, match=r"calibration.json: 'bias' must be a list"):
        load_calibrator(tmp)


CASES = [
    Case(
        "calibrate-on-test",
        lambda t: [*_setup(t), "--calibrate", "bias", "--val-split", "test"],
        r"must not be fitted on the test split",
    ),
    Case(
        "conformal-on-test",
        lambda t: [*_setup(t), "--conformal", "0.1", "--val-split", "testing"],
        r"conformal thresholds.*must not be fitted on the test split",
    ),
    Case("conformal-alpha-out-of-range", lambda t: [*_setup(t), "--conformal", "1.5"], r"--conformal.*\(0, 1\)"),
    Case("unknown-kind", lambda t: [*_setup(t), "--calibrate", "platt"], r"invalid choice: 'platt'"),
    Case("broken-bias-record", _broken_record, r"usage", code=0, check=_check_broken),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_uncertainty_cases(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, tmp_path, capsys)
