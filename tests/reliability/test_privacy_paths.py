"""Image paths (hospital file names are often MRNs) stay out of every output by default.

One tiny real run on a manifest whose images are named like `images/MRN12345678.png` and whose
groups are the same ids; `evaluate`, `audit`, `explain` and `predict` then run through the CLI and
every file they write is searched for the identifier. `--show-paths` brings the paths back (and
only then). Each output still carries the manifest row (the join key).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import make_run
from tests.reliability.harness import Case, run_case

MRN = "MRN1234567"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """A run whose manifest names images (and groups) by MRN, with an audit spec beside it."""
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from tests.audit.conftest import small_spec

    root = tmp_path_factory.mktemp("privacy_paths")
    manifest = generate_synthetic(root / "data", n=30, size=64, seed=11).manifest_path
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):
        new = f"images/{MRN}{i:02d}.png"
        (manifest.parent / r["image"]).rename(manifest.parent / new)
        r["image"], r["group"] = new, f"{MRN}{i:02d}"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    make_run(root / "r", manifest, "cnn", "lora")
    spec = small_spec()
    spec["statistics"]["n_bootstrap"] = 500
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root


def _outputs(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*") if p.is_file() and p.parent.name != "data"]


def _leaks(tmp: Path) -> list[str]:
    return [str(p) for p in _outputs(tmp) if MRN.encode() in p.read_bytes()]


def _commands(h: Path, tmp: Path, *extra: str) -> list[list[str]]:
    run, man = h / "r" / "run", h / "data" / "manifest.csv"
    return [
        ["evaluate", run, "--out", tmp / "eval", "--n-boot", "20", "--no-baselines", *extra],
        ["audit", run, "--spec", h / "spec.yaml", "--out", tmp / "audit", *extra],
        ["explain", run, "--manifest", man, "--limit", "2", "--out", tmp / "explain",
         "--token-attribution", *extra],
        ["predict", run, "--data", man, "--split", "test", "--out", tmp / "p.csv",
         "--allow-ungated", "--no-progress", *extra],
    ]


def _run_all(h: Path, tmp: Path, capsys, *extra: str) -> None:
    for argv in _commands(h, tmp, *extra):
        case = Case(argv[0], lambda _t, a=argv: [str(x) for x in a], expect=".", code=0)
        run_case(case, tmp, capsys)


def test_no_output_names_an_image_file_by_default(hospital, tmp_path, capsys):
    _run_all(hospital, tmp_path, capsys)
    written = _outputs(tmp_path)
    assert len(written) > 15  # metrics, report, predictions, audit files, maps, index, ...
    assert _leaks(tmp_path) == []
    with (tmp_path / "eval" / "predictions.csv").open() as fh:
        pred = list(csv.DictReader(fh))
    assert all(r["image"] == f"row {r['row']}" for r in pred)
    with (tmp_path / "audit" / "scores.csv").open() as fh:
        scores = list(csv.DictReader(fh))
    assert {r["image"] for r in scores} == {f"row {r['row']}" for r in scores}
    index = json.loads((tmp_path / "explain" / "index.json").read_text())
    assert [i["image"] for i in index["items"]][:1] == [f"row {index['items'][0]['row']}"]
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    flips = [ex for exs in audit["flip_examples"].values() for ex in exs]
    assert all(ex["path"] == "" and ex["group"] == "" for ex in flips)
    report = (tmp_path / "audit" / "report.md").read_text()
    assert "burned-in text" in report


def test_show_paths_writes_them(hospital, tmp_path, capsys):
    _run_all(hospital, tmp_path, capsys, "--show-paths")
    leaks = {Path(p).name for p in _leaks(tmp_path)}
    assert {"predictions.csv", "scores.csv", "index.json", "p.csv"} <= leaks
