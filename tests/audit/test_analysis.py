"""Shifts, flips, calibration and the gate rule on hand-built score tables with known answers."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from domainclip.audit.analysis import (
    Cell,
    FramingComparison,
    calibration_by_framing,
    compare_framing,
)
from domainclip.audit.gate import FAIL, PASS, SKIPPED, gate_checks, verdict, write_junit
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import parse_audit_spec
from domainclip.evaluation.bootstrap import Estimate


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand_table(temperature: float = 1.0, positives=None) -> ScoreTable:
    """2 classes (a, b), framings ref / f1, 4 images with targets a, b, a, b.

    ref decides every image right; f1 flips images 0 and 3.
    """
    ref = [[2, 0], [0, 2], [1, 0], [0, 1]]
    f1 = [[0, 2], [0, 2], [1, 0], [1, 0]]
    logits = np.array([ref, f1], dtype=float)
    target = np.array([0, 1, 0, 1])
    pos = np.eye(2, dtype=bool)[target] if positives is None else np.asarray(positives)
    return ScoreTable(["ref", "f1"], ["a", "b"], logits, logits / 10, temperature, target, pos)


def test_scores_decisions_and_flips_by_hand():
    t = hand_table()
    assert t.scores[0] == pytest.approx([_sig(2), _sig(2), _sig(1), _sig(1)])
    assert t.scores[1] == pytest.approx([_sig(-2), _sig(2), _sig(1), _sig(-1)])
    assert t.decisions.tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    assert t.correct.tolist() == [[True] * 4, [False, True, True, False]]
    comp = compare_framing(t, "f1", "ref", {"site": ["x", "x", "y", "y"]}, 300, 0, 2)
    d = [_sig(-2) - _sig(2), 0.0, 0.0, _sig(-1) - _sig(1)]
    assert comp.overall.mean_shift.value == pytest.approx(np.mean(d))
    assert comp.overall.median_shift.value == pytest.approx(np.median(d))
    assert comp.overall.raw_shift.value == pytest.approx((-0.2 + 0 + 0 - 0.1) / 4)
    assert (comp.overall.n_flips, comp.overall.flip_rate.value) == (2, 0.5)
    a = comp.per_class["a"]
    assert (a.n, a.n_flips) == (2, 1)
    assert a.mean_shift.value == pytest.approx((_sig(-2) - _sig(2)) / 2)
    y = comp.per_subgroup["site"]["y"]
    assert y.mean_shift.value == pytest.approx((_sig(-1) - _sig(1)) / 2) and y.n_flips == 1
    assert comp.overall.wilcoxon["n_nonzero"] == 2


def test_temperature_divides_logits_before_softmax():
    t = hand_table(temperature=2.0)
    assert t.scores[0] == pytest.approx([_sig(1), _sig(1), _sig(0.5), _sig(0.5)])
    assert t.decisions.tolist() == hand_table().decisions.tolist()  # T never changes decisions


def test_multi_label_decision_counts_as_correct_for_any_label():
    t = hand_table(positives=[[True, True], [False, True], [True, False], [False, True]])
    assert t.correct[1].tolist() == [True, True, True, False]  # image 0 labelled a and b


def test_ece_per_framing_by_hand():
    t = hand_table()
    cal = calibration_by_framing(t, n_boot=200, seed=0, n_bins=15)
    # ref: every decision right; confidences sigma(2) (x2) and sigma(1) (x2) sit in two bins.
    expected = (2 * (1 - _sig(2)) + 2 * (1 - _sig(1))) / 4
    assert cal["ref"]["ece"].value == pytest.approx(expected)
    assert cal["ref"]["accuracy"].value == 1.0 and cal["f1"]["accuracy"].value == 0.5
    # f1: confidences sigma(2) x2 (one right, one wrong), sigma(1) x2 (one right, one wrong)
    f1 = (2 * abs(0.5 - _sig(2)) + 2 * abs(0.5 - _sig(1))) / 4
    assert cal["f1"]["ece"].value == pytest.approx(f1)


def _cell(key, n, mean, p, flips=0, tested=True, reason=None):
    est = Estimate(mean, mean - 0.01, mean + 0.01)
    rate = Estimate(flips / n, 0.0, 1.0)
    return Cell(key, n, tested, est, est, est, p, {}, flips, rate, reason)


def _spec():
    return parse_audit_spec(
        {
            "name": "g",
            "version": "1",
            "findings": {"a": "a", "b": "b"},
            "reference": "ref",
            "framings": {
                "ref": "x {finding}",
                "f1": "y {finding}",
                "neg": {"template": "no {finding}", "expect": "lower"},
            },
            "thresholds": {"max_abs_mean_shift": 0.05, "max_flip_rate": 0.1, "max_ece": 0.2},
        }
    )


def test_gate_rule_magnitude_and_holm_corrected_significance():
    comps = {
        "f1": FramingComparison(
            "f1",
            overall=_cell("f1/all", 100, 0.10, 0.001, flips=20),  # big, significant -> FAIL
            per_class={
                "a": _cell("f1/class=a", 50, 0.01, 0.001),  # significant but small -> PASS
                "b": _cell("f1/class=b", 3, 0.5, None, tested=False, reason="n=3 < 10"),
            },
            per_subgroup={},
        ),
        # A negation framing is reported, never gated, however large its shift.
        "neg": FramingComparison("neg", _cell("neg/all", 100, -0.4, 0.001, 90), {}, {}),
    }
    cal = {
        "ref": {"ece": Estimate(0.05, 0.03, 0.07)},
        "f1": {"ece": Estimate(0.25, 0.2, 0.3)},
        "neg": {"ece": Estimate(0.9, 0.8, 1.0)},
    }
    checks = {c.id: c for c in gate_checks(_spec(), comps, cal)}
    assert set(checks) == {
        "mean_shift/f1/all",
        "mean_shift/f1/class=a",
        "mean_shift/f1/class=b",
        "flip_rate/f1",
        "ece/ref",
        "ece/f1",
    }
    assert checks["mean_shift/f1/all"].status == FAIL
    assert checks["mean_shift/f1/all"].p_adjusted == pytest.approx(0.002)  # 2 tested cells
    assert checks["mean_shift/f1/class=a"].status == PASS
    assert checks["mean_shift/f1/class=b"].status == SKIPPED
    assert checks["flip_rate/f1"].status == FAIL  # 0.2 > 0.1
    assert checks["ece/ref"].status == PASS and checks["ece/f1"].status == FAIL
    v = verdict(list(checks.values()))
    assert v["verdict"] == FAIL and v["n_failed"] == 3 and v["n_skipped"] == 1


def test_holm_turns_a_marginal_cell_into_a_pass():
    # Alone, p = 0.03 < 0.05 would fail; among three tested cells Holm multiplies it by 2 or 3.
    comps = {
        "f1": FramingComparison(
            "f1",
            overall=_cell("f1/all", 100, 0.06, 0.03),
            per_class={"a": _cell("a", 50, 0.0, 0.9), "b": _cell("b", 50, 0.07, 0.02)},
            per_subgroup={},
        )
    }
    checks = {c.id: c for c in gate_checks(_spec(), comps, {})}
    assert checks["mean_shift/f1/all"].p_adjusted == pytest.approx(0.06)
    assert checks["mean_shift/f1/all"].status == PASS
    assert checks["mean_shift/f1/class=b"].p_adjusted == pytest.approx(0.06)
    single = {"f1": FramingComparison("f1", _cell("f1/all", 100, 0.06, 0.03), {}, {})}
    assert gate_checks(_spec(), single, {})[0].status == FAIL


def test_junit_has_one_testcase_per_check(tmp_path):
    comps = {
        "f1": FramingComparison(
            "f1",
            overall=_cell("f1/all", 100, 0.10, 0.001, flips=20),
            per_class={"b": _cell("b", 3, 0.5, None, tested=False, reason="n=3")},
            per_subgroup={},
        )
    }
    checks = gate_checks(
        _spec(), comps, {"ref": {"ece": Estimate(0.05)}, "f1": {"ece": Estimate(0.1)}}
    )
    path = write_junit(checks, tmp_path / "junit.xml", "domainclip.audit.g")
    root = ET.parse(path).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(checks) == 5
    assert root.get("failures") == "2" and root.get("skipped") == "1"
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["f1/all", "f1/all"]  # the mean shift and the flip rate of f1
    assert "Holm-adjusted" in cases[0].find("failure").get("message")


def test_a_bootstrap_too_coarse_for_the_holm_correction_is_refused():
    from domainclip.audit.gate import check_resolution
    from domainclip.errors import ConfigError

    raw = _spec().to_dict()
    raw["findings"] = {f"c{i}": f"c{i}" for i in range(60)}  # 1 gated framing x 61 cells
    raw["statistics"]["n_bootstrap"] = 2000  # smallest adjusted p = 61 / 2001 > alpha / 2
    with pytest.raises(ConfigError, match=r"n_bootstrap = 2000 is too small .* at least 2440"):
        check_resolution(parse_audit_spec(raw, "big.yaml"))
    raw["statistics"]["n_bootstrap"] = 2440
    check_resolution(parse_audit_spec(raw))


def _shift_only_cell(key, d):
    from domainclip.audit.analysis import shift_cell

    d = np.asarray(d, float)
    return shift_cell(key, d, d, d != 0, np.zeros(len(d), int), 500, 0, 5)


def test_model_comparison_uses_paired_mean_absolute_shifts():
    from domainclip.audit.compare import AMPLIFIED, REDUCED, UNCLEAR, compare_cells

    rng = np.random.default_rng(0)
    base_d = rng.normal(0.0, 0.02, 40)
    louder = compare_cells(
        _shift_only_cell("f/all", 3 * base_d), _shift_only_cell("f/all", base_d), 500, 0
    )
    assert louder["verdict"] == AMPLIFIED
    assert louder["mean_abs_shift_model"] == pytest.approx(3 * louder["mean_abs_shift_base"])
    quieter = compare_cells(
        _shift_only_cell("f/all", base_d / 2), _shift_only_cell("f/all", base_d), 500, 0
    )
    assert quieter["verdict"] == REDUCED
    # the same per-image magnitudes with opposite signs: no change in sensitivity at all
    mirrored = compare_cells(
        _shift_only_cell("f/all", -base_d), _shift_only_cell("f/all", base_d), 500, 0
    )
    assert mirrored["verdict"] == UNCLEAR
    assert mirrored["mean_abs_shift_difference"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert mirrored["flip_rate_difference"]["value"] == 0.0
