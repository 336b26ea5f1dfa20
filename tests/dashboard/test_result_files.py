"""Damaged or older result files in a run: the page says which file, what is wrong and what to
run, instead of raising (AppTest on a copy of the session's LoRA run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import APP, DashRuns, serve
from .helpers import no_exceptions


@pytest.fixture
def run_copy(dash_runs: DashRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the LoRA run alone in a runs directory the app is started on."""
    run = tmp_path / "runs" / "lora"
    shutil.copytree(dash_runs.lora, run)
    serve(monkeypatch, run.parent, dash_runs.data)
    return run


def _page(view: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page(view).run()
    no_exceptions(at)
    return at


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_calibration_page_names_a_damaged_metrics_json(run_copy: Path) -> None:
    metrics = next((run_copy / "eval").glob("*/metrics.json"))
    _edit(metrics, lambda d: d["calibration"]["before"].pop("ece"))
    at = _page("views/calibration.py")
    errors = [e.value for e in at.error]
    assert any(
        str(metrics) in e
        and "'calibration.before.ece' is missing" in e
        and f"domainclip evaluate {run_copy} --fit-temperature" in e
        for e in errors
    ), errors
    assert not at.dataframe  # nothing half-drawn from the damaged file


def test_calibration_page_warns_about_an_older_metrics_json(run_copy: Path) -> None:
    metrics = next((run_copy / "eval").glob("*/metrics.json"))
    _edit(metrics, lambda d: d.update(schema="domainclip.evaluation/0"))
    at = _page("views/calibration.py")
    warnings = [w.value for w in at.warning]
    assert any("written by an older domainclip" in w and str(metrics) in w for w in warnings)
    assert not at.error


def test_calibration_page_reads_a_version_1_metrics_json(run_copy: Path) -> None:
    """Files written before the schema key (version 1) are migrated, not refused."""
    metrics = next((run_copy / "eval").glob("*/metrics.json"))
    _edit(metrics, lambda d: d.pop("schema"))
    at = _page("views/calibration.py")
    assert not at.error and not at.warning
    assert at.dataframe  # the calibration table


def test_calibration_page_names_a_metrics_json_that_is_not_json(run_copy: Path) -> None:
    metrics = next((run_copy / "eval").glob("*/metrics.json"))
    metrics.write_text('{"name": "cut off by a kill')
    at = _page("views/calibration.py")
    assert any(str(metrics) in e.value and "cannot be read" in e.value for e in at.error)


def test_audit_page_names_a_damaged_audit_json(run_copy: Path) -> None:
    audit = run_copy / "audit" / "synthetic" / "audit.json"
    _edit(audit, lambda d: d["flip_examples"][next(iter(d["flip_examples"]))].append({"row": 1}))
    at = _page("views/audit.py")
    errors = [e.value for e in at.error]
    assert any(
        str(audit) in e and "is missing" in e and f"domainclip audit {run_copy} --spec synthetic" in e
        for e in errors
    ), errors
    assert not at.dataframe


def test_audit_page_warns_about_another_audit_schema(run_copy: Path) -> None:
    audit = run_copy / "audit" / "synthetic" / "audit.json"
    _edit(audit, lambda d: d.update(schema="domainclip.audit/2"))
    at = _page("views/audit.py")
    assert any("written by a newer domainclip" in w.value for w in at.warning)


def test_a_damaged_explain_index_breaks_no_page(run_copy: Path) -> None:
    """No dashboard page reads RUN/explain/**/index.json (the model card does: its test names
    the file); a damaged one must not disturb any page."""
    index = run_copy / "explain" / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text('{"format": "domainclip.explain.index/1", "items": 3}')
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    no_exceptions(at)
    for view, shown in (("views/calibration.py", "Temperature T"), ("views/audit.py", "Max ECE")):
        at.switch_page(view).run()
        no_exceptions(at)
        assert not any("index.json" in e.value for e in at.error)
        assert any(m.label == shown for m in at.metric)  # the page rendered in full
