"""Reliability of `domainclip predict` and `domainclip export`: bad images, folders with
non-images, runs without calibration or without a passed gate, and damaged ONNX exports.

Each case gets a fresh copy of one tiny real run (LoRA, temperature fitted, audit gate passed)
and its ONNX export under `tmp/run` and `tmp/onnx` (`_stage`, the small helper this file adds to
the harness: cases build on copies, so one can break its run without touching the others).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.deploy.conftest import make_run, write_gate
from tests.reliability.harness import Case, Outcome, run_case


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """A run with a passed gate and its fp32 ONNX export (built once per module)."""
    from domainclip.cli import main
    from domainclip.datasets.importers.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("rel_deploy")
    manifest = generate_synthetic(root / "data", n=40, size=64, seed=7).manifest_path
    run = make_run(root / "r", manifest, "cnn", "lora")
    write_gate(run, "pass")
    assert main(["export", str(run), "--format", "onnx", "--out", str(root / "onnx")]) == 0
    return root


def _stage(staged: Path, tmp: Path) -> None:
    shutil.copytree(staged / "r" / "run", tmp / "run")
    shutil.copytree(staged / "onnx", tmp / "onnx")
    images = tmp / "images"
    images.mkdir()
    for i, src in enumerate(sorted((staged / "data" / "images").glob("*.png"))[:3]):
        shutil.copy(src, images / f"ok{i}.png")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _bad_images(tmp: Path) -> list[str]:
    (tmp / "images" / "truncated.png").write_bytes((tmp / "images" / "ok0.png").read_bytes()[:60])
    (tmp / "images" / "empty.jpg").write_bytes(b"")
    return ["predict", tmp / "run", "--images", tmp / "images", "--out", tmp / "p.csv", "--no-progress",
            "--show-paths"]


def _check_bad_images(tmp: Path, outcome: Outcome) -> None:
    rows = _rows(tmp / "p.csv")
    bad = {Path(r["image"]).name: r["reason"] for r in rows if r["status"] == "error"}
    assert set(bad) == {"truncated.png", "empty.jpg"} and all(bad.values())
    assert sum(r["status"] == "ok" for r in rows) == 3
    prov = json.loads((tmp / "p.csv.provenance.json").read_text())
    assert prov["counts"]["n_failed"] == 2 and prov["counts"]["n_scored"] == 3


def _non_images(tmp: Path) -> list[str]:
    (tmp / "images" / "notes.txt").write_text("not an image")
    (tmp / "images" / "sub").mkdir()
    (tmp / "images" / "sub" / "table.csv").write_text("a,b\n1,2\n")
    return ["predict", "--onnx", tmp / "onnx", "--images", tmp / "images", "--out", tmp / "p.csv", "--no-progress",
            "--show-paths"]


def _check_non_images(tmp: Path, outcome: Outcome) -> None:
    rows = _rows(tmp / "p.csv")
    assert {Path(r["image"]).name for r in rows if r["status"] == "error"} == {"notes.txt", "table.csv"}
    assert all(r["predicted"] for r in rows if r["status"] == "ok")


def _uncalibrated(tmp: Path) -> list[str]:
    (tmp / "run" / "calibration.json").unlink()
    return ["predict", tmp / "run", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _uncalibrated_allowed(tmp: Path) -> list[str]:
    return [*_uncalibrated(tmp), "--allow-uncalibrated", "--no-progress"]


def _check_recorded(key: str):
    def check(tmp: Path, outcome: Outcome) -> None:
        assert json.loads((tmp / "p.csv.provenance.json").read_text())[key] is True

    return check


def _gate_failed(tmp: Path) -> list[str]:
    write_gate(tmp / "run", "fail")
    return ["predict", tmp / "run", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _never_gated(tmp: Path) -> list[str]:
    shutil.rmtree(tmp / "run" / "audit")
    return ["predict", tmp / "run", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _onnx_missing_graph(tmp: Path) -> list[str]:
    (tmp / "onnx" / "image.onnx").unlink()
    return ["predict", "--onnx", tmp / "onnx", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _onnx_no_manifest(tmp: Path) -> list[str]:
    (tmp / "onnx" / "manifest.json").unlink()
    return ["predict", "--onnx", tmp / "onnx", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _onnx_gate_failed(tmp: Path) -> list[str]:
    man = json.loads((tmp / "onnx" / "manifest.json").read_text())
    man["provenance"]["gate"]["verdict"] = "fail"
    (tmp / "onnx" / "manifest.json").write_text(json.dumps(man))
    return ["predict", "--onnx", tmp / "onnx", "--images", tmp / "images", "--out", tmp / "p.csv"]


def _export_uncalibrated(tmp: Path) -> list[str]:
    (tmp / "run" / "calibration.json").unlink()
    return ["export", tmp / "run", "--format", "onnx", "--out", tmp / "o2"]


CASES = [
    Case("unreadable images become rows with a reason", _bad_images, r"scored 3 images, 2 could not be read",
         code=0, check=_check_bad_images),
    Case("a folder with non-images", _non_images, r"scored 3 images, 2 could not be read", code=0,
         check=_check_non_images),
    Case("a run without calibration is refused", _uncalibrated, r"no fitted calibrator.*--fit-temperature.*--allow-uncalibrated"),
    Case("... unless --allow-uncalibrated (recorded)", _uncalibrated_allowed, r"scored 3 images", code=0,
         check=_check_recorded("allow_uncalibrated")),
    Case("a failed gate is refused", _gate_failed, r"audit gate failed.*--allow-ungated"),
    Case("a never-run gate is refused", _never_gated, r"never passed an audit gate.*domainclip audit"),
    Case("--onnx folder missing a graph", _onnx_missing_graph, r"missing image\.onnx.*re-run `domainclip export"),
    Case("--onnx folder without manifest", _onnx_no_manifest, r"no manifest\.json"),
    Case("an export whose gate failed is refused", _onnx_gate_failed, r"audit gate failed"),
    Case("export of a run without calibration is refused", _export_uncalibrated, r"no fitted calibrator"),
    Case("output must be csv or jsonl", lambda tmp: ["predict", "--onnx", tmp / "onnx", "--images", tmp / "images",
         "--out", tmp / "p.txt"], r"must end in \.csv or \.jsonl"),
    Case("no images", lambda tmp: ["predict", "--onnx", tmp / "onnx", "--images", tmp / "nothing", "--out",
         tmp / "p.csv"], r"not a folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_deploy_case(case: Case, staged: Path, tmp_path: Path, capsys) -> None:
    _stage(staged, tmp_path)
    run_case(case, tmp_path, capsys)


def test_never_gated_is_allowed_and_recorded(staged: Path, tmp_path: Path, capsys) -> None:
    _stage(staged, tmp_path)
    case = Case("--allow-ungated", lambda tmp: [*_never_gated(tmp), "--allow-ungated", "--no-progress"],
                r"gate: never run \(--allow-ungated\)", code=0, check=_check_recorded("allow_ungated"))
    run_case(case, tmp_path, capsys)
    assert Image.open(tmp_path / "images" / "ok0.png").size == (64, 64)
