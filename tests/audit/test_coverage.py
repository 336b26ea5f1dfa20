"""Coverage under framing shift: conformal sets calibrated under the reference framing, applied to
every framing (audit.coverage), its gate check (thresholds.max_coverage_drop) and audit.json."""

from __future__ import annotations

import numpy as np

from domainclip.audit.api import run_audit
from domainclip.audit.coverage import coverage_checks, framing_coverage
from domainclip.audit.results import AuditReport
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import load_audit_spec
from domainclip.audit.testing import PlantedBiasBackbone
from tests.audit.conftest import POSSIBLY, SEVERE, small_spec


def _table(n=400, seed=0, shift=3.0):
    """5 classes; neutral/hedged identical and informative; alarming adds +shift to class 0's logit."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    z = rng.normal(0, 1, (n, 5))
    z[np.arange(n), y] += 2.0
    alarming = z.copy()
    alarming[:, 0] += shift
    logits = np.stack([z, alarming, z, z - 1])
    return ScoreTable(["neutral", "alarming", "hedged", "negated"], ["scratch", "pit", "crack", "patch", "clean"],
                      logits, logits.copy(), 1.0, y, np.eye(5, dtype=bool)[y])


def test_coverage_holds_for_the_reference_and_drops_under_a_shifted_framing():
    spec = load_audit_spec(small_spec(coverage_alpha=0.1))
    t = _table()
    groups = {"texture": ["a" if i % 2 else "b" for i in range(t.n)]}
    cov = framing_coverage(spec, t, groups)
    pf = cov["per_framing"]
    assert abs(pf["neutral"]["coverage"] - 0.9) < 0.02  # split conformal: ~1 - alpha
    assert pf["hedged"]["coverage"] == pf["neutral"]["coverage"]  # the same scores
    assert pf["alarming"]["coverage"] < 0.8 and pf["alarming"]["drop_vs_reference"] > 0.1
    lo, hi = pf["neutral"]["ci95"]
    assert lo <= pf["neutral"]["coverage"] <= hi and pf["neutral"]["mean_set_size"] >= 1
    assert set(cov["per_subgroup"]["texture"]) == {"a", "b"}
    assert cov["per_subgroup"]["texture"]["a"]["n"] == 200
    assert cov["calibration_size"] == 200 and cov["target_coverage"] == 0.9


def test_gate_check_is_off_unless_the_spec_sets_it():
    t = _table()
    off = load_audit_spec(small_spec())
    assert off.thresholds.max_coverage_drop is None
    assert coverage_checks(off, framing_coverage(off, t)) == []
    on = load_audit_spec(small_spec(max_coverage_drop=0.05))
    checks = {c.framing: c for c in coverage_checks(on, framing_coverage(on, t))}
    assert set(checks) == {"alarming", "hedged"}  # invariant framings other than the reference
    assert checks["alarming"].status == "fail" and "does not survive" in checks["alarming"].message
    assert checks["hedged"].status == "pass" and abs(checks["hedged"].threshold - 0.85) < 1e-12


def test_run_audit_writes_coverage_and_fails_a_planted_framing(tiny_backbone, manifest_path, tmp_path):
    model = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 6.0, POSSIBLY: 0.0})
    spec = small_spec(max_abs_mean_shift=None, max_flip_rate=None, max_coverage_drop=0.05,
                      coverage_alpha=0.2)
    res = run_audit(model, spec, manifest_path, split=None, out_dir=tmp_path)
    back = AuditReport.read(tmp_path / "audit.json")
    assert back.coverage["per_framing"].keys() == {"neutral", "alarming", "hedged", "negated"}
    cov = back.coverage["per_framing"]
    assert cov["hedged"]["coverage"] == cov["neutral"]["coverage"]
    failed = {c["id"] for c in res.failed_checks}
    assert ("coverage/alarming" in failed) == (cov["alarming"]["coverage"] < 0.75)
    assert "coverage/hedged" not in failed
