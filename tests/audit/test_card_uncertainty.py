"""Card wording for the calibrator (any kind, why auto chose it) and the conformal sets (guarantee,
measured coverage, assumption, coverage under framing shift from the audit)."""

from __future__ import annotations

import shutil

from domainclip.audit import run_audit, write_card
from domainclip.evaluation.evaluate import evaluate
from tests.audit.conftest import small_spec


def test_card_states_the_calibrator_and_the_coverage_guarantee(tiny_run, manifest_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    res = evaluate(run, calibrate="isotonic", conformal=0.1, n_boot=0, baselines=False)
    run_audit(run, small_spec(max_ece=None), manifest_path, split=None, out_dir=run / "audit" / "small")
    text = write_card(run).read_text()
    assert "Isotonic regression per class (" in text and "(calibrator `isotonic`)" in text  # no T there
    assert "Guarantee: for a new image, the true class is in the set with probability at least 0.90" in text
    assert f"coverage {res['conformal']['coverage']['value']:.3f}" in text
    assert "exchangeable" in text and "new site, device, population" in text
    assert "Coverage under framing shift" in text and "| alarming |" in text
