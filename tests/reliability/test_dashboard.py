"""Reliability cases for dashboard reads (issue 13): what a run directory may contain that the
dashboard must answer with a short message on the page, never an exception or another file's
content.

`harness.py` drives the CLI; the dashboard's reads happen inside Streamlit pages, so these cases
use the same table-driven shape with a small helper of their own (`_page`): each case damages a
copy of the session's LoRA run (tests/dashboard/conftest.py), renders one page with Streamlit's
AppTest, and asserts that no exception reached the page, that a message matching `expect` is
shown, and that nothing from the file outside (`LEAK`) appears.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import APP, DashRuns, serve
from tests.dashboard.conftest import dash_runs as dash_runs  # the session's runs (fixture)
from tests.dashboard.helpers import no_exceptions, page_text

LEAK = "TOP-SECRET-LINE"


@dataclass(frozen=True)
class PageCase:
    """build(run, outside) damages the run (outside: a folder nobody allowed); page: the view
    script to render; expect: regex over the page's messages."""

    name: str
    build: Callable[[Path, Path], None]
    page: str
    expect: str


def _config(run: Path, key: str, value: str) -> None:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    cfg[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _metrics(run: Path) -> Path:
    return run / "eval" / "data_test" / "metrics.json"


def _audit(run: Path) -> Path:
    return run / "audit" / "synthetic" / "audit.json"


def _absolute_manifest(run: Path, outside: Path) -> None:
    _config(run, "data.manifest", str(outside / "secret.csv"))


def _dotdot_manifest(run: Path, outside: Path) -> None:
    _config(run, "data.manifest", "../../outside/secret.csv")


def _symlinked_manifest(run: Path, outside: Path) -> None:
    (run / "manifest.csv").symlink_to(outside / "secret.csv")
    _config(run, "data.manifest", "manifest.csv")


def _non_manifest_inside(run: Path, outside: Path) -> None:
    (run / "notes.txt").write_text(f"{LEAK}\nsecond line\n")
    _config(run, "data.manifest", "notes.txt")


def _audit_manifest_outside(run: Path, outside: Path) -> None:
    _edit_json(_audit(run), lambda d: d["data"].update(manifest=str(outside / "secret.csv")))


def _malformed_metrics(run: Path, outside: Path) -> None:
    _metrics(run).write_text('{"schema_version": 1, "calibration": ')


def _metrics_missing_key(run: Path, outside: Path) -> None:
    _edit_json(_metrics(run), lambda d: d.pop("calibration"))


def _malformed_audit(run: Path, outside: Path) -> None:
    _audit(run).write_text("[1, 2")


def _audit_missing_key(run: Path, outside: Path) -> None:
    _edit_json(_audit(run), lambda d: d.pop("gate"))


def _metrics_symlink_out(run: Path, outside: Path) -> None:
    (outside / "metrics.json").write_text(_metrics(run).read_text())
    _metrics(run).unlink()
    _metrics(run).symlink_to(outside / "metrics.json")


CASES = [
    PageCase("absolute manifest outside (Data)", _absolute_manifest, "data", "--data-root"),
    PageCase("absolute manifest outside (Saliency)", _absolute_manifest, "saliency", "--data-root"),
    PageCase("../ manifest outside (Data)", _dotdot_manifest, "data", "--data-root"),
    PageCase("manifest symlinked out (Data)", _symlinked_manifest, "data", "--data-root"),
    PageCase("non-manifest file inside the run", _non_manifest_inside, "data", "manifest"),
    PageCase(
        "audit.json names a manifest outside", _audit_manifest_outside, "audit", "--data-root"
    ),
    PageCase("metrics.json truncated", _malformed_metrics, "calibration", r"metrics\.json"),
    PageCase(
        "metrics.json without calibration", _metrics_missing_key, "calibration", "calibration"
    ),
    PageCase("audit.json truncated", _malformed_audit, "audit", r"audit\.json"),
    PageCase("audit.json without gate", _audit_missing_key, "audit", "gate"),
    PageCase(
        "metrics.json symlinked out of the run", _metrics_symlink_out, "calibration", "evaluate"
    ),
]


def _messages(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.warning, at.info) for e in kind]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dashboard_read(
    case: PageCase, dash_runs: DashRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    run = runs / "lora"
    shutil.copytree(dash_runs.lora, run, ignore=shutil.ignore_patterns("tb"))
    outside.mkdir()
    (outside / "secret.csv").write_text(f"image,text\nx.png,{LEAK}\n")
    case.build(run, outside)
    serve(monkeypatch, runs, dash_runs.data)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page(f"views/{case.page}.py").run()
    no_exceptions(at)
    assert re.search(case.expect, _messages(at), re.I | re.S), _messages(at)
    assert LEAK not in page_text(at)
