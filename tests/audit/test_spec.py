"""Audit spec parsing: the shipped specs load, and every malformed input gets a clear error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from domainclip.audit.spec import (
    SPEC_DIR,
    AuditSpecError,
    load_audit_spec,
    parse_audit_spec,
)
from domainclip.datasets.importers.synthetic import DEFAULT_CLASSES
from domainclip.errors import ConfigError
from tests.audit.conftest import small_spec


@pytest.mark.parametrize("name", ["synthetic", "neu_det", "covid_cxr"])
def test_shipped_specs_load_by_name(name):
    spec = load_audit_spec(name)
    assert spec.name == name
    assert spec.reference in spec.framing_names
    assert any(f.expect == "lower" for f in spec.framings)  # each ships a negation check
    for f in spec.framings:
        texts = spec.prompts(f)
        assert len(set(texts)) == len(texts), "two findings share a prompt"
        assert all("{" not in t for t in texts)


def test_synthetic_spec_covers_the_generator_classes():
    assert set(load_audit_spec("synthetic").labels) == set(DEFAULT_CLASSES)


def test_prompts_fill_finding_and_defect_alias_and_keep_control_text():
    spec = parse_audit_spec(small_spec())
    hedged = spec.framing("hedged")
    prompts = dict(zip(spec.labels, spec.prompts(hedged), strict=True))
    assert prompts["scratch"] == "a metal surface with POSSIBLY scratches"  # {defect} alias
    assert prompts["clean"] == "a clean metal surface"  # control class: same under every framing
    assert spec.prompt(spec.findings[4], spec.framing("alarming")) == "a clean metal surface"
    assert spec.prompts(spec.framing("alarming"))[0] == "a metal surface with SEVERE scratches"


def test_control_finding_without_text_uses_the_reference_template():
    raw = small_spec()
    raw["findings"]["clean"] = {"name": "no defects", "framed": False}
    spec = parse_audit_spec(raw)
    clean = spec.findings[-1]
    for f in spec.framings:
        assert spec.prompt(clean, f) == "a metal surface with no defects"


def test_round_trip_through_to_dict():
    spec = parse_audit_spec(small_spec())
    again = parse_audit_spec(spec.to_dict())
    assert again.findings == spec.findings
    assert again.framings == spec.framings
    assert again.thresholds == spec.thresholds
    assert again.statistics == spec.statistics


def _err(raw: dict) -> str:
    with pytest.raises(AuditSpecError) as info:
        parse_audit_spec(raw, "spec.yaml")
    assert isinstance(info.value, ConfigError)
    return str(info.value)


def test_template_without_finding_placeholder():
    raw = small_spec()
    raw["framings"]["alarming"] = "a metal surface with a severe defect"
    msg = _err(raw)
    assert "framings.alarming.template" in msg and "{finding}" in msg and "spec.yaml" in msg


def test_unknown_placeholder_and_malformed_braces():
    raw = small_spec()
    raw["framings"]["alarming"] = "a {surface} with {finding}"
    assert "unknown placeholder" in _err(raw) and "'surface'" in _err(raw)
    raw["framings"]["alarming"] = "a surface with {finding"
    assert "malformed" in _err(raw)


def test_framing_named_twice_in_yaml_is_caught(tmp_path: Path):
    text = (SPEC_DIR / "synthetic.yaml").read_text()
    dup = text.replace(
        '  lay: "a piece of metal',
        '  hedged: "a metal surface that may have {defect}"\n  lay: "a piece of metal',
    )
    path = tmp_path / "dup.yaml"
    path.write_text(dup)
    with pytest.raises(AuditSpecError) as info:
        load_audit_spec(path)
    msg = str(info.value)
    assert "'hedged'" in msg and "twice" in msg and str(path) in msg and "lines" in msg


def test_framing_named_twice_in_list_form():
    raw = small_spec()
    raw["framings"] = [
        {"name": "neutral", "template": "a metal surface with {finding}"},
        {"name": "alarming", "template": "a metal surface with severe {finding}"},
        {"name": "alarming", "template": "a metal surface with awful {finding}"},
    ]
    assert "'alarming' is named twice" in _err(raw)


def test_two_framings_with_the_same_template():
    raw = small_spec()
    raw["framings"]["hedged"] = raw["framings"]["neutral"]
    assert "same template" in _err(raw)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_abs_mean_shift", "0.05", "must be a number"),
        ("max_flip_rate", True, "must be a number"),
        ("max_ece", [0.1], "must be a number"),
        ("alpha", 0.0, "outside (0.0, 0.5]"),
        ("max_ece", 1.5, "outside [0.0, 1.0]"),
        ("max_shift", 0.1, "unknown key(s) max_shift"),
    ],
)
def test_thresholds_of_the_wrong_type_or_range(key, value, expected):
    raw = small_spec()
    raw["thresholds"][key] = value
    msg = _err(raw)
    assert expected in msg and "spec.yaml" in msg
    if key != "max_shift":
        assert f"thresholds.{key}" in msg


def test_null_threshold_switches_a_check_off():
    raw = small_spec(max_flip_rate=None)
    assert parse_audit_spec(raw).thresholds.max_flip_rate is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(reference="calm"), "reference 'calm' is not one of the framings"),
        (lambda r: r.update(reference="negated"), "cannot be a negation"),
        (
            lambda r: r["findings"].update(scratch={"name": "x", "colour": 1}),
            "unknown key(s) colour",
        ),
        (lambda r: r.update(findings={"scratch": "scratches"}), "at least two classes"),
        (lambda r: r.update(framings={"neutral": "a {finding}"}), "at least one other framing"),
        (lambda r: r["findings"].update(pit={"name": "pits", "text": "x"}), "only for control"),
        (lambda r: r["framings"].update(lay={"template": "a {finding}", "expect": "up"}), "expect"),
        (lambda r: r["statistics"].update(n_bootstrap=10), "at least 200"),
        (lambda r: r["statistics"].update(seed="zero"), "must be an integer"),
        (lambda r: r.update(colour="red"), "unknown key(s) colour"),
        (lambda r: r.pop("version"), "`version` is required"),
        (lambda r: r.update(name="../x"), "folder name"),
        (lambda r: r.update(subgroups=[1]), "subgroups"),
    ],
)
def test_other_malformed_specs(mutate, expected):
    raw = copy.deepcopy(small_spec())
    mutate(raw)
    assert expected in _err(raw)


def test_missing_spec_file_lists_the_shipped_ones(tmp_path: Path):
    with pytest.raises(AuditSpecError) as info:
        load_audit_spec("no_such_spec")
    assert "neu_det" in str(info.value) and "covid_cxr" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(AuditSpecError, match="not valid YAML"):
        load_audit_spec(bad)


def test_setting_named_twice_in_yaml_names_the_key_and_both_lines(tmp_path: Path):
    text = (SPEC_DIR / "synthetic.yaml").read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("max_ece:"))
    lines.insert(at + 1, "  max_ece: 0.5")
    path = tmp_path / "twice.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditSpecError) as info:
        load_audit_spec(path)
    assert f"key 'max_ece' appears twice (lines {at + 1} and {at + 2})" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_setting_suggests_the_closest_key():
    raw = small_spec()
    raw["statistics"]["n_bootstraps"] = 500
    msg = _err(raw)
    assert "'statistics.n_bootstraps'" in msg and "did you mean 'n_bootstrap'?" in msg
