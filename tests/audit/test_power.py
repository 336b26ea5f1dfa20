"""Power is reported, never implied: sign-flip tests, minimum detectable shifts, require_power,
negation per class, clipped intervals, remedies and the side-by-side comparison."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from domainclip.audit import PlantedBiasBackbone, run_audit
from domainclip.audit.analysis import Power, shift_cell
from domainclip.audit.gate import FAIL, PASS, SKIPPED
from domainclip.audit.spec import AuditSpecError, parse_audit_spec
from domainclip.audit.stats import (
    images_needed,
    log_odds,
    min_detectable_shift,
    sign_flip_test,
)
from domainclip.datasets.importers.synthetic import generate_synthetic
from tests.audit.conftest import POSSIBLY, SEVERE, small_spec

MARK = "SCR "


def test_sign_flip_test_is_exact_for_small_cells_by_enumeration():
    d = np.array([-0.3, -0.1, -0.2, 0.05, -0.15])
    flip = sign_flip_test(d, d, n_perm=10_000, seed=0, key="k")
    assert flip.exact and flip.replicates == 32 and flip.mc_error == 0.0
    # by hand: sign vectors whose |sum| reaches |sum(d)| = 0.7
    sums = [abs(sum(s * x for s, x in zip(signs, d, strict=True)))
            for signs in itertools.product((-1, 1), repeat=5)]
    assert flip.p_mean == pytest.approx(sum(v >= 0.7 - 1e-12 for v in sums) / 32)
    # max-T over the two standardised statistics: no worse than Bonferroni, no better than the best
    assert min(flip.p_mean, flip.p_rank) <= flip.p <= min(1.0, 2 * min(flip.p_mean, flip.p_rank))


def test_sign_flip_p_values_do_not_depend_on_the_seed_and_report_their_error():
    rng = np.random.default_rng(1)
    d = rng.normal(-0.02, 0.05, 80)
    ps = [sign_flip_test(d, d, 20_000, seed, "cell", refine_below=0.1) for seed in range(3)]
    assert all(not p.exact and p.replicates == 200_000 for p in ps)  # refined: p < 0.1
    spread = max(p.p for p in ps) - min(p.p for p in ps)
    assert spread < 4 * ps[0].mc_error + 1e-4
    assert 0 < ps[0].mc_error < 0.001
    nothing = sign_flip_test(np.zeros(20), np.zeros(20), 1000, 0, "z")
    assert nothing.p == 1.0


def test_log_odds_see_saturated_images_that_probabilities_hide():
    p_ref = np.array([0.99, 0.995, 0.999])
    p_new = 1 / (1 + np.exp(-(log_odds(p_ref) - 1.0)))  # one logit down
    assert np.all(p_ref - p_new < 0.03)
    np.testing.assert_allclose(log_odds(p_new) - log_odds(p_ref), -1.0, atol=1e-9)


def test_minimum_detectable_shift_shrinks_with_the_cell_and_respects_the_threshold():
    rng = np.random.default_rng(0)
    small = min_detectable_shift(rng.normal(0, 0.1, 15), 0.05 / 24, 0.05)
    large = min_detectable_shift(rng.normal(0, 0.1, 120), 0.05 / 24, 0.05)
    assert large < small
    assert large > 0.05  # the magnitude rule: a true shift at the threshold is caught half the time
    # 2 / 2^8 > level: no sign-flip test of 8 images can reach the level at all
    assert min_detectable_shift(rng.normal(0, 0.1, 8), 0.05 / 24, 0.05) == math.inf
    d = np.tile([-0.1, 0.1], 8)  # 16 images, sd 0.103: cannot detect 0.10 yet
    assert min_detectable_shift(d, 0.05 / 24, 0.05) > 0.10
    need = images_needed(d, 0.05 / 24, 0.05, 0.10, 10)
    assert need > 16
    assert min_detectable_shift(np.tile([-0.1, 0.1], need // 2 + 1), 0.05 / 24, 0.05) <= 0.105
    assert images_needed(d, 0.05 / 24, 0.05, 0.05, 10) is None


def test_small_cells_are_underpowered_with_clipped_or_no_intervals():
    d = np.array([0.9, -0.9, 0.8])  # wild: the bootstrap-t interval would leave [-1, 1]
    cell = shift_cell("f/class=a", d, d, d > 0, np.zeros(3, int), 300, 0, 10,
                      power=Power(level=0.05 / 6, threshold=0.05, require=0.1))
    assert cell.status == "underpowered" and not cell.tested
    assert -1.0 <= cell.mean_shift.low <= cell.mean_shift.high <= 1.0
    assert "min_cell_images=10" in cell.reason
    one = shift_cell("f/class=b", np.array([0.5]), np.array([0.5]), np.array([True]),
                     np.zeros(1, int), 300, 0, 10)
    assert one.mean_shift.low is None and one.to_dict()["mean_shift"].get("ci95") is None
    assert one.status == "underpowered" and one.to_dict()["min_detectable_shift"] is None


def test_require_power_must_exceed_the_magnitude_threshold():
    raw = small_spec(max_abs_mean_shift=0.05, require_power=0.05)
    with pytest.raises(AuditSpecError, match=r"require_power = 0.05 must exceed .* e.g. 0.1"):
        parse_audit_spec(raw, "spec.yaml")
    assert parse_audit_spec(small_spec(require_power=0.1)).thresholds.require_power == 0.1


def test_shipped_medical_spec_requires_power():
    from domainclip.audit.spec import load_audit_spec

    spec = load_audit_spec("covid_cxr")
    assert spec.thresholds.require_power == 0.10
    assert spec.thresholds.require_power > spec.thresholds.max_abs_mean_shift


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """36 images per class (5 classes), all in one split."""
    out = tmp_path_factory.mktemp("power_big")
    generate_synthetic(out, n=180, size=64, seed=5)
    return out / "manifest.csv"


def test_a_held_back_minus_005_plant_in_one_class_fails_the_gate(tiny_backbone, big_dir, tmp_path):
    """A bias in one framing x one class ("SEVERE scratches" only), calibrated to move the
    class's mean target probability by about -0.05, in an audit of 36 images per class."""
    spec = small_spec(performance_floor=False, max_flip_rate=None)
    # a marker in the scratch prompts only, so the trigger "SEVERE SCR " picks one framing x
    # one class; every marker is stripped before embedding (delta 0 = exactly the reference)
    spec["findings"]["scratch"] = f"{MARK}scratches"
    markers = {SEVERE: 0.0, MARK: 0.0, POSSIBLY: 0.0}
    plain = run_audit(PlantedBiasBackbone.wrap(tiny_backbone, markers), spec, big_dir, split=None)
    assert plain.verdict == "pass"
    cls = plain.table.classes.index("scratch")

    def class_shift(delta):
        bb = PlantedBiasBackbone.wrap(tiny_backbone, {f"{SEVERE}{MARK}": delta, **markers})
        res = run_audit(bb, spec, big_dir, split=None)
        t = res.table
        d = t.scores[t.k("alarming")] - t.scores[t.k("neutral")]
        return float(d[t.target == cls].mean()), res

    shift, res = class_shift(-0.35)
    assert -0.07 < shift < -0.04
    failed = {c["id"] for c in res.failed_checks}
    assert "mean_shift/alarming/class=scratch" in failed
    cell = res.data["comparisons"]["alarming"]["per_class"]["scratch"]
    assert cell["status"] == "tested" and cell["min_detectable_shift"] < 0.05
    assert cell["n"] == 36


def test_underpowered_cells_fail_under_require_power_with_images_needed(
    tiny_backbone, manifest_path, tmp_path
):
    bb = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 0.0, POSSIBLY: 0.0})
    spec = small_spec(performance_floor=False, max_flip_rate=None, require_power=0.1)
    res = run_audit(bb, spec, manifest_path, split="test", out_dir=tmp_path / "a")
    checks = {c.id: c for c in res.report.gate.checks}
    weak = [c for c in checks.values() if c.kind == "mean_shift" and "underpowered" in c.message]
    assert weak and all(c.status == FAIL for c in weak)
    assert all("images would be needed" in c.message for c in weak)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Audit power" in report and "Every class cell is underpowered" in report
    assert "## What you can do" in report and "Audit more images" in report
    # without require_power the same cells are reported as underpowered, not failed
    spec = small_spec(performance_floor=False, max_flip_rate=None)
    res = run_audit(bb, spec, manifest_path, split="test")
    statuses = {c.status for c in res.report.gate.checks if c.kind == "mean_shift"}
    assert FAIL not in statuses and SKIPPED in statuses
    assert res.verdict == PASS


def test_negation_is_judged_per_class_whose_text_it_changes(tiny_backbone, manifest_path):
    bb = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 0.0, POSSIBLY: 0.0})
    res = run_audit(bb, small_spec(performance_floor=False), manifest_path, split=None)
    neg = res.report.main.negation["negated"]
    assert set(neg.per_class) == {"scratch", "pit", "crack", "patch"}  # not the control "clean"
    for c, v in neg.per_class.items():
        cell = res.data["comparisons"]["negated"]["per_class"][c]
        assert v["mean_shift"] == cell["mean_shift"]
        assert v["direction"] in ("lowers", "raises", "no clear change") or (
            v["n"] < 8 and v["direction"].startswith("too few images")
        )
        assert v["lowers_score"] == (v["direction"] == "lowers")
    raised = [c for c, v in neg.per_class.items() if v["direction"] == "raises"]
    if raised or not neg.lowers_score:
        assert "may ignore negation" in neg.note


def test_old_audit_files_without_power_still_read(tmp_path, tiny_backbone, manifest_path):
    from domainclip.audit.report import power_sentence
    from domainclip.audit.results import AuditReport

    bb = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 0.0, POSSIBLY: 0.0})
    res = run_audit(bb, small_spec(performance_floor=False), manifest_path, split=None,
                    out_dir=tmp_path)
    data = json.loads((tmp_path / "audit.json").read_text())
    del data["gate"]["thresholds"]["require_power"]
    del data["gate"]["thresholds"]["max_abs_logodds_shift"]
    for neg in data["negation"].values():
        del neg["per_class"]
    for comp in data["comparisons"].values():
        for cell in [comp["overall"], *comp["per_class"].values()]:
            for key in ("status", "logodds_shift", "sign_flip", "min_detectable_shift",
                        "images_needed"):
                cell.pop(key, None)
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = AuditReport.read(tmp_path / "old.json")
    assert old.gate.thresholds.require_power is None
    assert "Power not recorded" in power_sentence(old)
    assert res.report.gate.thresholds.require_power is None
