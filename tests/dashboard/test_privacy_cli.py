"""Metadata privacy rules and the `domainclip dashboard` command line."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from domainclip.cli import main
from domainclip.dashboard import RUNS_ENV, cli, manifests
from domainclip.privacy import displayable_columns, is_shown_column, pseudonym

from .conftest import PATIENT_NAMES, DashRuns


@pytest.mark.parametrize(
    "column",
    [
        "patient_name",
        "PatientID",
        "Patient's Birth Date",
        "dob",
        "MRN",
        "e-mail",
        "AccessionNumber",
    ],
)
def test_identifying_columns(column: str) -> None:
    assert not is_shown_column(column)


def test_displayable_columns_keep_order_and_analysis_columns() -> None:
    cols = ["view", "sex", "PatientName", "age", "boxes", "birth_date"]
    assert displayable_columns(cols) == ["view", "sex", "age", "boxes"]


def test_pseudonyms_are_stable_and_hide_the_id() -> None:
    key = b"k" * 32
    assert pseudonym("patient-42", key) == pseudonym("patient-42", key)
    assert pseudonym("patient-42", key) != pseudonym("patient-43", key)
    p = pseudonym("patient-42", key)
    assert p.startswith("grp-") and len(p) == 12 and "patient" not in p
    assert pseudonym("", key) == ""


def test_manifest_view_drops_identifying_columns(dash_runs: DashRuns) -> None:
    view = manifests.manifest_view(dash_runs.manifest, b"k" * 32)
    assert view.hidden_columns == ["patient_name"]
    assert "patient_name" not in view.table.columns
    assert "sex" in view.table.columns
    text = view.table.to_csv()
    assert not any(name in text for name in PATIENT_NAMES)
    assert all(g.startswith("grp-") for g in view.table["group"])


def test_streamlit_command_is_headless_without_usage_stats() -> None:
    cmd = cli.streamlit_command("127.0.0.1", 8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert Path(cmd[4]) == cli.APP_SCRIPT and cli.APP_SCRIPT.is_file()
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--server.port"] == "8600"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert flags["--client.showErrorDetails"] == "none"  # exception details stay in the server log


def test_cli_passes_runs_dir_and_warns_on_non_loopback(
    dash_runs: DashRuns, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[list[str], dict]] = []

    def record(cmd: list[str], env: dict) -> int:  # records instead of starting a server
        calls.append((cmd, env))
        return 0

    # POSIX replaces the process with Streamlit (os.execve), elsewhere it waits on a child
    if os.name == "posix":
        monkeypatch.setattr(os, "execve", lambda path, cmd, env: record(cmd, env))
    else:
        monkeypatch.setattr(subprocess, "call", record)
    assert main(["dashboard", "--runs", str(dash_runs.lora), "--port", "8611"]) == 0
    cmd, env = calls[-1]
    assert env[RUNS_ENV] == str(dash_runs.lora.resolve())
    assert "127.0.0.1" in cmd
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING):
        assert main(["dashboard", "--runs", str(dash_runs.root), "--host", "0.0.0.0"]) == 0
    assert "without authentication" in caplog.text
    assert calls[-1][1][RUNS_ENV] == str(dash_runs.root.resolve())


def test_cli_rejects_a_directory_without_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["dashboard", "--runs", str(tmp_path)]) == 2
    assert "no fine-tuning run" in capsys.readouterr().err
    assert main(["dashboard", "--runs", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
