"""The one template type and the one `humanise` shared by prompt sets, audit specs and importers."""

from __future__ import annotations

import pytest

from domainclip.audit.spec import AuditSpecError, parse_audit_spec
from domainclip.datasets.importers.folder import load_templates, render_template
from domainclip.errors import ConfigError, DataError
from domainclip.scoring.prompts import load_prompt_set
from domainclip.templates import Slot, Template, humanise
from tests.audit.conftest import small_spec

LABEL = Slot("label", ("finding", "defect"))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("rolled-in_scale", "rolled in scale"),
        ("pitted_surface", "pitted surface"),
        ("  No  Finding ", "No Finding"),
        ("a--b__c", "a b c"),
        ("Edema", "Edema"),
    ],
)
def test_humanise(name, words):
    assert humanise(name) == words


def test_parse_lists_canonical_placeholders_and_fills_synonyms():
    t = Template.parse("{defect} near {label}, {{x}}", (LABEL,), source="f.yaml", where="t[0]")
    assert t.fields == ("label",)
    assert t.fill(label="a pit") == "a pit near a pit, {x}"
    assert str(t) == t.text
    assert Template.parse("plain", (LABEL,), source="s", where="w").fields == ()
    with pytest.raises(KeyError, match="label"):
        t.fill()


def test_errors_name_source_where_and_bad_placeholder():
    with pytest.raises(ConfigError) as exc:
        Template.parse("a {colour} {label}", (LABEL,), source="p.yaml", where="templates[1]")
    msg = str(exc.value)
    assert msg.startswith("p.yaml: templates[1]") and "'colour'" in msg
    assert "{label} (or {finding}, {defect})" in msg
    with pytest.raises(DataError, match=r"s: w .*malformed"):
        Template.parse("a {label", (LABEL,), source="s", where="w", error=DataError)
    with pytest.raises(ConfigError, match=r"no \{label\} placeholder, because"):
        Template.parse("x", (LABEL,), source="s", where="w", missing_hint="because")
    with pytest.raises(ConfigError, match=r"\{\}"):
        Template.parse("a {}", (LABEL,), source="s", where="w")


def test_every_system_makes_hyphenated_names_readable(tmp_path):
    ps = load_prompt_set({"version": 1, "templates": ["a {label}"]})
    assert ps.class_texts(["rolled-in_scale"]) == {"rolled-in_scale": ["a rolled in scale"]}
    raw = small_spec()
    raw["findings"]["rolled-in_scale"] = None
    spec = parse_audit_spec(raw)
    assert spec.findings[-1].name == "rolled in scale"
    table = load_templates({"*": "a photo of {class}"})
    assert render_template(table["*"], "rolled-in_scale") == "a photo of rolled in scale"


def test_folder_templates_refuse_unknown_placeholders():
    with pytest.raises(DataError, match=r"templates: template 'pit' .*'kind'.*\{class\}"):
        load_templates({"pit": "a {kind} of {class}"})
    assert render_template(load_templates({"a": "{{raw}} {class}"})["a"], "b") == "{raw} b"


def test_audit_framings_share_the_template_type():
    raw = small_spec()
    raw["framings"]["alarming"] = "a {label} surface with {finding}"
    with pytest.raises(AuditSpecError, match=r"'label'.*allowed: \{finding\} \(or \{defect\}\)"):
        parse_audit_spec(raw, "spec.yaml")
    spec = parse_audit_spec(small_spec())
    assert all(isinstance(f.template, Template) for f in spec.framings)
    assert spec.to_dict()["framings"]["neutral"]["template"] == spec.framing("neutral").template.text
