"""Confinement of the dashboard's reads (runs directory + `--data-root` only), the metadata
column allow list and the keyed group pseudonyms (issue 13, "Confinement and privacy")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from domainclip.dashboard import manifests
from domainclip.dashboard.access import PathAccessError, RunsAccess
from domainclip.datasets import read_manifest, write_manifest
from domainclip.privacy import (
    KEY_FILE,
    displayable_columns,
    hidden_columns,
    is_shown_column,
    pseudonym,
    pseudonym_key,
)

from .conftest import DashRuns

FLAG = "--data-root"


def _set_manifest(run: Path, manifest: str) -> None:
    """Rewrite the run's config.yaml `data.manifest`."""
    import yaml

    cfg_path = run / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"]["manifest"] = manifest
    cfg_path.write_text(yaml.safe_dump(cfg))


@pytest.fixture
def layout(dash_runs: DashRuns, tmp_path: Path) -> dict[str, Path]:
    """tmp/runs/a (a copy of the LoRA run), tmp/data (a copy of the data), tmp/outside (a
    folder nobody allowed, holding a CSV and an image)."""
    runs, data, outside = tmp_path / "runs", tmp_path / "data", tmp_path / "outside"
    shutil.copytree(dash_runs.lora, runs / "a", ignore=shutil.ignore_patterns("tb"))
    shutil.copytree(dash_runs.data, data)
    outside.mkdir()
    (outside / "secret.csv").write_text("image,text\nx.png,confidential\n")
    shutil.copy(next((data / "images").glob("*.png")), outside / "private.png")
    _set_manifest(runs / "a", str(data / dash_runs.manifest.name))
    return {"runs": runs, "data": data, "outside": outside, "run": runs / "a"}


def test_allowed_data_root_works(layout: dict[str, Path]) -> None:
    acc = RunsAccess(layout["runs"], [layout["data"]])
    ref = acc.run("a")
    manifest = acc.manifest_of(ref)
    assert manifest is not None and manifest.parent == layout["data"].resolve()
    assert acc.manifest(manifest) == manifest
    view = manifests.manifest_view(manifest, b"k" * 32)
    existing = next(p for p in view.images if p.is_file())
    assert acc.listed_file(existing, view.listed_files) == existing


def test_absolute_manifest_outside_is_refused_naming_the_flag(layout: dict[str, Path]) -> None:
    acc = RunsAccess(layout["runs"])  # default: nothing beyond the runs directory
    with pytest.raises(PathAccessError, match=f"outside the runs directory.*{FLAG}"):
        acc.manifest_of(acc.run("a"))
    assert acc.manifests() == {}  # not listed on the Data page either
    _set_manifest(layout["run"], str(layout["outside"] / "secret.csv"))
    acc = RunsAccess(layout["runs"], [layout["data"]])
    with pytest.raises(PathAccessError, match=FLAG):
        acc.manifest_of(acc.run("a"))
    with pytest.raises(PathAccessError):
        acc.manifest(layout["outside"] / "secret.csv")


def test_relative_dotdot_manifest_is_refused(layout: dict[str, Path]) -> None:
    _set_manifest(layout["run"], "../../outside/secret.csv")
    acc = RunsAccess(layout["runs"], [layout["data"]])
    with pytest.raises(PathAccessError, match=FLAG):
        acc.manifest_of(acc.run("a"))


def test_result_file_naming_a_manifest_elsewhere_is_refused(layout: dict[str, Path]) -> None:
    metrics = layout["run"] / "eval" / "data_test" / "metrics.json"
    data = json.loads(metrics.read_text())
    data["data"]["manifest"] = str(layout["outside"] / "secret.csv")
    metrics.write_text(json.dumps(data))
    acc = RunsAccess(layout["runs"], [layout["data"]])
    with pytest.raises(PathAccessError, match=FLAG):
        acc.result_manifest(acc.run("a"), "eval/data_test/metrics.json")


def _manifest_with_rows(layout: dict[str, Path], images: list[str]) -> Path:
    src = read_manifest(layout["data"] / "manifest_meta.csv")
    rows = []
    for i, image in enumerate(images):
        r = src.rows[i]
        r.image = image
        rows.append(r)
    path = write_manifest(rows, layout["data"] / "evil.csv")
    _set_manifest(layout["run"], str(path))
    return path


def test_dotdot_rows_and_absolute_rows_are_refused(layout: dict[str, Path]) -> None:
    private = layout["outside"] / "private.png"
    path = _manifest_with_rows(layout, ["../outside/private.png", str(private), "images/x.png"])
    acc = RunsAccess(layout["runs"], [layout["data"]])
    assert acc.manifest(acc.manifest_of(acc.run("a"))) == path.resolve()
    view = manifests.manifest_view(path, b"k" * 32)
    assert private.resolve() in view.listed_files  # the manifest lists it ...
    for image in view.images[:2]:
        with pytest.raises(PathAccessError, match=f"refusing to read the image.*{FLAG}"):
            acc.listed_file(image, view.listed_files)  # ... but it is never read


def test_symlinks_out_of_a_data_root_are_refused(layout: dict[str, Path]) -> None:
    (layout["data"] / "images" / "link.png").symlink_to(layout["outside"] / "private.png")
    (layout["data"] / "linked.csv").symlink_to(layout["outside"] / "secret.csv")
    path = _manifest_with_rows(layout, ["images/link.png"])
    acc = RunsAccess(layout["runs"], [layout["data"]])
    view = manifests.manifest_view(path, b"k" * 32)
    with pytest.raises(PathAccessError, match=FLAG):
        acc.listed_file(view.images[0], view.listed_files)
    _set_manifest(layout["run"], str(layout["data"] / "linked.csv"))
    with pytest.raises(PathAccessError, match=FLAG):
        acc.manifest_of(acc.run("a"))
    # a data root that is itself a link is resolved: its target is what is allowed
    (layout["runs"].parent / "data_link").symlink_to(layout["data"], target_is_directory=True)
    acc = RunsAccess(layout["runs"], [layout["runs"].parent / "data_link"])
    assert acc.data_roots == (layout["data"].resolve(),)


def test_missing_data_root_is_a_clear_error(layout: dict[str, Path]) -> None:
    with pytest.raises(PathAccessError, match=f"{FLAG} .*does not exist"):
        RunsAccess(layout["runs"], [layout["runs"].parent / "nope"])


def test_manifest_inside_the_runs_directory_needs_no_flag(layout: dict[str, Path]) -> None:
    inside = layout["runs"] / "data"
    shutil.copytree(layout["data"], inside)
    _set_manifest(layout["run"], "../data/manifest_meta.csv")
    acc = RunsAccess(layout["runs"])
    assert acc.manifest_of(acc.run("a")) == (inside / "manifest_meta.csv").resolve()


# ------------------------------------------------------------------------ identifying columns

IDENTIFIERS = [
    "pat_id",
    "subject",
    "hospital_no",
    "geburtsdatum",
    "mrn",
    "pid",
    "case_id",
    "record_number",
    "subject_id",
    "accession",
]


@pytest.mark.parametrize("column", IDENTIFIERS)
def test_identifier_columns_are_hidden_by_default(column: str) -> None:
    assert not is_shown_column(column)
    assert is_shown_column(column, [column])  # unless the user allows it by name
    cols = ["view", column, "Age Group", "site"]
    assert displayable_columns(cols) == ["view", "Age Group", "site"]
    assert hidden_columns(cols) == [column]


def test_allowing_one_column_allows_only_that_one() -> None:
    assert displayable_columns(IDENTIFIERS, ["Case ID"]) == ["case_id"]
    assert not is_shown_column("site_id")  # exact names only: "site" is safe, "site_id" is not


def test_manifest_view_hides_unlisted_columns_unless_allowed(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    src = read_manifest(layout["data"] / "manifest_meta.csv")
    for i, r in enumerate(src.rows):
        r.meta["pat_id"] = f"PAT{i:04d}"
    path = write_manifest(src.rows, tmp_path / "m.csv")
    view = manifests.manifest_view(path, b"k" * 32)
    assert "pat_id" in view.hidden_columns and "pat_id" not in view.table.columns
    assert "PAT0001" not in view.table.to_csv()
    allowed = manifests.manifest_view(path, b"k" * 32, ["pat_id"])
    assert "pat_id" in allowed.table.columns and "PAT0001" in allowed.table.to_csv()
    assert allowed.hidden_columns == ["patient_name"]


def test_evaluation_report_hides_unlisted_subgroups(dash_runs: DashRuns) -> None:
    """The session's evaluation computed a patient_name subgroup (asked for by name): the
    report names it but shows its values only with --show-column."""
    from domainclip.evaluation.report import render_markdown
    from domainclip.evaluation.results import EvaluationResult

    result = EvaluationResult.read(dash_runs.lora / "eval" / "data_test" / "metrics.json")
    assert "patient_name" in result.calibration.subgroups
    text = render_markdown(result)
    assert "ECE by `sex`" in text and "ECE by `patient_name`" not in text
    assert "`patient_name`" in text and "--show-column" in text
    assert not any(name in text for name in ("Jane Roe", "John Doe", "Max Mustermann"))
    shown = render_markdown(result, ["patient_name"])
    assert "ECE by `patient_name`" in shown and "Jane Roe" in shown


def test_audit_report_hides_unlisted_subgroups(dash_runs: DashRuns) -> None:
    from domainclip.audit.report import report_blocks, to_markdown
    from domainclip.audit.results import AuditReport

    audit_dir = dash_runs.lora / "audit" / "synthetic"
    report = AuditReport.read(audit_dir / "audit.json")
    text = to_markdown(report_blocks(report, {}, audit_dir))
    assert "sex = F" in text and "patient_name = " not in text
    assert "Jane Roe" not in text and "`patient_name`" in text
    shown = to_markdown(report_blocks(report, {}, audit_dir, ["patient_name"]))
    assert "patient_name = Jane Roe" in shown


def test_written_audit_report_has_no_patient_names(dash_runs: DashRuns) -> None:
    text = (dash_runs.lora / "audit" / "synthetic" / "report.md").read_text()
    assert not any(name in text for name in ("Jane Roe", "John Doe", "Max Mustermann"))


# ------------------------------------------------------------------------ keyed pseudonyms


def test_pseudonym_key_is_private_stable_and_shared(tmp_path: Path) -> None:
    key = pseudonym_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudonym_key(tmp_path) == key  # reused: pseudonyms stable within a runs directory
    assert pseudonym("4711", key) == pseudonym("4711", pseudonym_key(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name != KEY_FILE]  # no temporary left
    other = tmp_path / "other"
    other.mkdir()
    assert pseudonym_key(other) != key  # another runs directory, another key


def test_pseudonym_is_not_recoverable_without_the_key(tmp_path: Path) -> None:
    key = pseudonym_key(tmp_path)
    shown = pseudonym("4711", key)
    candidates = [str(i) for i in range(10_000)]
    unkeyed = {"grp-" + hashlib.sha256(c.encode()).hexdigest()[:8]: c for c in candidates}
    assert shown not in unkeyed  # the old brute force (unsalted SHA-256) finds nothing
    assert pseudonym("4711", b"\0" * 32) != shown  # a guessed key does not reproduce it
    assert pseudonym("4712", key) != shown


def test_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(OSError, match="delete it"):
        pseudonym_key(tmp_path)


def test_key_is_never_printed(dash_runs: DashRuns, monkeypatch, capsys) -> None:
    from domainclip.cli import main

    monkeypatch.setattr(os, "execve", lambda path, cmd, env: 0)
    assert (
        main(["dashboard", "--runs", str(dash_runs.root), "--data-root", str(dash_runs.data)]) == 0
    )
    key = pseudonym_key(dash_runs.root)
    out = capsys.readouterr()
    assert key.hex() not in out.out + out.err and repr(key) not in out.out + out.err
