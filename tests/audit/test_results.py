"""`AuditReport`: audit.json round trip and clear errors for damaged or older files."""

from __future__ import annotations

import copy
import json

import pytest

from domainclip.audit import PlantedBiasBackbone, run_audit
from domainclip.audit.results import SCHEMA, AuditReport
from domainclip.errors import ResultFileError
from tests.audit.conftest import POSSIBLY, SEVERE, small_spec


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_backbone, manifest_path):
    """An audit with a planted bias, compared with the unbiased base model, written to disk."""
    out = tmp_path_factory.mktemp("audit_results")
    model = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 2.0, POSSIBLY: 0.0})
    base = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 0.0, POSSIBLY: 0.0})
    spec = small_spec()
    spec["statistics"]["n_bootstrap"] = 200  # enough for the Holm resolution check of this spec
    spec["thresholds"]["alpha"] = 0.2
    result = run_audit(model, spec, manifest_path, split=None, out_dir=out, compare=base)
    return result, out / "audit.json"


def test_what_is_written_reads_back_equal(audited) -> None:
    result, path = audited
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA == "domainclip.audit/1"
    assert data == result.data == result.report.to_json()
    again = AuditReport.read(path)
    assert again == AuditReport.from_json(result.report.to_json()) == result.report
    assert again.to_json() == data
    # typed parts: the gate's checks, flip examples and the base comparison
    assert again.gate.verdict == result.verdict
    assert [c.id for c in again.gate.failed_checks] == [c["id"] for c in result.failed_checks]
    assert again.gate.thresholds.max_abs_mean_shift == 0.02
    flips = again.flip_examples["alarming"]
    assert flips and flips[0].reference.decision != flips[0].framed.decision
    assert again.compare is not None and again.compare.base_gate.thresholds is None
    assert set(again.compare.sensitivity_change) == set(again.main.comparisons)
    assert again.main.negation["negated"].lowers_score in (True, False)


def _at(d, dotted: str):
    for p in dotted.split("."):
        d = d[int(p)] if isinstance(d, list) else d[p]
    return d


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("gate", None, "'gate' is missing"),
        ("gate.verdict", "maybe", "expected pass or fail"),
        ("gate.checks.0.status", None, "'gate.checks[0].status' is missing"),
        ("gate.thresholds.alpha", "0.05", "'gate.thresholds.alpha'"),
        ("framings.alarming.ece", None, "'framings.alarming.ece' is missing"),
        ("comparisons.alarming.overall.flip_rate", None, "overall.flip_rate' is missing"),
        ("comparisons.alarming.per_subgroup.texture.cast.n", "8", "per_subgroup.texture.cast.n"),
        ("flip_examples.alarming.0.framed.decision", None, "alarming[0].framed.decision"),
        ("data.n_images", None, "'data.n_images' is missing"),
        ("model.temperature", "1", "'model.temperature'"),
        ("compare.base.gate.verdict", None, "'compare.base.gate.verdict' is missing"),
        ("negation.negated.lowers_score", 0, "'negation.negated.lowers_score'"),
    ],
)
def test_malformed_content_names_file_key_and_command(audited, tmp_path, path, value, expected):
    result, _ = audited
    data = copy.deepcopy(result.data)
    *parent, last = path.split(".")
    holder = _at(data, ".".join(parent)) if parent else data
    if value is None:
        del holder[int(last) if isinstance(holder, list) else last]
    else:
        holder[last] = value
    file = tmp_path / "audit.json"
    file.write_text(json.dumps(data))
    with pytest.raises(ResultFileError) as info:
        AuditReport.read(file, "domainclip audit RUN --spec small")
    message = str(info.value)
    assert str(file) in message and expected in message, message
    assert "re-run `domainclip audit RUN --spec small`" in message
    assert not info.value.outdated


def test_other_versions_and_other_files(audited, tmp_path) -> None:
    data = audited[0].data
    with pytest.raises(ResultFileError, match="written by an older domainclip") as info:
        AuditReport.from_json({**data, "schema": "domainclip.audit/0"}, "a/audit.json")
    assert info.value.outdated
    with pytest.raises(ResultFileError, match="not an audit report"):
        AuditReport.from_json({k: v for k, v in data.items() if k != "schema"}, "a/audit.json")
    file = tmp_path / "audit.json"
    file.write_text('{"truncated": ')
    with pytest.raises(ResultFileError, match="cannot be read"):
        AuditReport.read(file)
