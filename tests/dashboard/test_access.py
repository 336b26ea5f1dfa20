"""The dashboard's read guard: only the runs directory and the manifests the runs reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from domainclip.dashboard import manifests
from domainclip.dashboard.access import PathAccessError, RunsAccess, resolve_inside

from .conftest import DashRuns


@pytest.fixture
def runs_copy(dash_runs: DashRuns, tmp_path: Path) -> Path:
    """A private copy of the LoRA run under tmp_path/runs/exp/a (tests add links to it)."""
    root = tmp_path / "runs"
    shutil.copytree(dash_runs.lora, root / "exp" / "a", ignore=shutil.ignore_patterns("tb"))
    (tmp_path / "secret.txt").write_text("not for the dashboard")
    return root


def test_lists_runs_in_a_directory_and_a_single_run(dash_runs: DashRuns) -> None:
    acc = RunsAccess(dash_runs.root)
    assert [r.name for r in acc.runs()] == ["lora", "probe"]
    single = RunsAccess(dash_runs.lora)
    assert [(r.name, r.path) for r in single.runs()] == [("lora", dash_runs.lora.resolve())]


def test_finds_runs_two_levels_down(runs_copy: Path) -> None:
    assert [r.name for r in RunsAccess(runs_copy).runs()] == ["exp/a"]


@pytest.mark.parametrize(
    "attempt", ["../../etc/passwd", "/etc/passwd", "../secret.txt", "eval/../../secret.txt"]
)
def test_run_files_reject_traversal(runs_copy: Path, attempt: str) -> None:
    acc = RunsAccess(runs_copy)
    ref = acc.run("exp/a")
    with pytest.raises(PathAccessError, match="outside"):
        acc.run_file(ref, attempt)
    assert acc.run_file(ref, "eval/data_test/metrics.json").is_file()


def test_run_names_reject_traversal(runs_copy: Path) -> None:
    acc = RunsAccess(runs_copy)
    with pytest.raises(PathAccessError, match="outside"):
        acc.run("../../etc")
    with pytest.raises(PathAccessError, match="no run named"):
        acc.run("exp")  # inside, but not a run


def test_symlinks_out_of_the_runs_directory_are_refused(runs_copy: Path, tmp_path: Path) -> None:
    acc = RunsAccess(runs_copy)
    ref = acc.run("exp/a")
    (ref.path / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PathAccessError, match="outside"):
        acc.run_file(ref, "leak.txt")
    # a whole run directory linked in from elsewhere is not served either
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ref.path, elsewhere)
    (runs_copy / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert [r.name for r in acc.runs()] == ["exp/a"]
    # and a config.yaml that is a link out of the run is not followed to a manifest
    (ref.path / "config.yaml").rename(tmp_path / "config.yaml")
    (ref.path / "config.yaml").symlink_to(tmp_path / "config.yaml")
    with pytest.raises(PathAccessError, match="outside"):
        acc.manifest_of(ref)


def test_only_referenced_manifests_and_their_files(dash_runs: DashRuns, tmp_path: Path) -> None:
    acc = RunsAccess(dash_runs.root, [dash_runs.data])
    assert acc.manifest(dash_runs.manifest) == dash_runs.manifest.resolve()
    assert set(acc.manifests()[dash_runs.manifest.resolve()]) == {"lora", "probe"}
    for other in ("/etc/passwd", dash_runs.manifest.parent / "manifest.csv"):
        with pytest.raises(PathAccessError, match="no run references"):
            acc.manifest(other)
    view = manifests.manifest_view(dash_runs.manifest, b"k" * 32)
    image = view.images[0]
    assert acc.listed_file(image, view.listed_files) == image
    with pytest.raises(PathAccessError, match="does not list"):
        acc.listed_file(image.parent / ".." / ".." / "backbone" / "x", view.listed_files)
    with pytest.raises(PathAccessError, match="does not list"):
        acc.listed_file("/etc/passwd", view.listed_files)


def test_resolve_inside_rejects_nul_and_accepts_the_base(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, ".") == tmp_path.resolve()
    with pytest.raises(PathAccessError, match="NUL"):
        resolve_inside(tmp_path, "a\x00b")


def test_missing_runs_directory(tmp_path: Path) -> None:
    with pytest.raises(PathAccessError, match="does not exist"):
        RunsAccess(tmp_path / "nope")
