"""`domainclip data validate | stats | import` through domainclip.cli.main: exit codes and output."""

from __future__ import annotations

import json

import pytest

from domainclip.cli import main
from domainclip.datasets.manifest import ManifestRow, read_manifest, write_manifest
from tests.datasets.helpers import save_rgb


@pytest.fixture
def good_manifest(tmp_path):
    for i in range(4):
        save_rgb(tmp_path / f"{i}.png")
    rows = [
        ManifestRow(f"{i}.png", f"caption {i}", ["pit" if i % 2 else "scratch"], f"g{i}", s)
        for i, s in enumerate(["train", "train", "val", "test"])
    ]
    return write_manifest(rows, tmp_path / "m.csv")


def test_validate_usable_exit_0_and_json(good_manifest, tmp_path, capsys):
    out_json = tmp_path / "report" / "r.json"
    rc = main(
        ["data", "validate", str(good_manifest), "--backbone", "none", "--json", str(out_json)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "rows: 4 in file, 4 usable, 0 skipped" in out and "result: USABLE" in out
    report = json.loads(out_json.read_text())
    assert report["ok"] is True and report["split_counts"] == {"train": 2, "val": 1, "test": 1}


def test_validate_counts_skips_but_stays_usable(good_manifest, capsys):
    (good_manifest.parent / "1.png").write_bytes(b"")
    rc = main(["data", "validate", str(good_manifest), "--backbone", "none"])
    out = capsys.readouterr().out
    assert rc == 0 and "image_empty: 1 (rows 2)" in out and "3 usable, 1 skipped" in out


def test_validate_leakage_exit_1(tmp_path, capsys):
    save_rgb(tmp_path / "a.png")
    save_rgb(tmp_path / "b.png")
    path = write_manifest(
        [
            ManifestRow("a.png", "t", group="lot1", split="train"),
            ManifestRow("b.png", "t", group="lot1", split="val"),
        ],
        tmp_path / "m.csv",
    )
    rc = main(["data", "validate", str(path), "--backbone", "none"])
    out = capsys.readouterr().out
    assert rc == 1 and "ERROR: 1 group(s)" in out and "'lot1'" in out and "NOT USABLE" in out


def test_validate_missing_manifest_exit_1(tmp_path, capsys):
    rc = main(["data", "validate", str(tmp_path / "none.csv"), "--backbone", "none"])
    assert rc == 1 and "manifest not found" in capsys.readouterr().out


def test_validate_with_saved_backbone_tokenizer(tmp_path, capsys):
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    bb_dir = save_backbone(tiny_open_clip_backbone(), tmp_path / "bb")
    save_rgb(tmp_path / "a.png")
    path = write_manifest(
        [ManifestRow("a.png", "defect " * 100, ["x"], split="train")], tmp_path / "m.csv"
    )
    rc = main(["data", "validate", str(path), "--backbone", str(bb_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and "text_truncated: 1 (rows 1)" in out and "against 77 tokens" in out


def test_stats(good_manifest, tmp_path, capsys):
    rc = main(["data", "stats", str(good_manifest), "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "class balance" in out and "text length (words)" in out
    assert json.loads((tmp_path / "s.json").read_text())["splits"] == {
        "train": 2,
        "val": 1,
        "test": 1,
    }


def test_stats_bad_manifest_clean_error(tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("file,caption\na.png,t\n", encoding="utf-8")
    rc = main(["data", "stats", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Found columns: file, caption" in err
    assert "Traceback" not in err


def test_import_synthetic_then_validate(tmp_path, capsys):
    out_dir = tmp_path / "syn"
    rc = main(
        [
            "data",
            "import",
            "synthetic",
            "--out",
            str(out_dir),
            "--n",
            "12",
            "--size",
            "32",
            "--seed",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 12 rows" in out and "skipped 0" in out
    m = read_manifest(out_dir / "manifest.csv")
    assert len(m) == 12 and {r.split for r in m.rows} <= {"train", "val", "test"}
    assert main(["data", "validate", str(out_dir / "manifest.csv"), "--backbone", "none"]) == 0


def test_import_synthetic_geometry_flags(tmp_path, capsys):
    out_dir = tmp_path / "strip"
    args = ["data", "import", "synthetic", "--out", str(out_dir), "--n", "5"]
    rc = main([*args, "--width", "300", "--height", "100", "--defect-size", "6-12"])
    assert rc == 0 and "300x100 px, defects 6-12 px" in capsys.readouterr().out
    for row in read_manifest(out_dir / "manifest.csv"):
        assert (row.meta["width"], row.meta["height"]) == ("300", "100")
        for x0, y0, x1, y1, _ in json.loads(row.meta["boxes"]):
            assert 6 <= max(x1 - x0, y1 - y0) <= 12
    rc = main([*args, "--size", "40", "--aspects", "1,5:2"])
    assert rc == 0 and "40x40 px (3), 100x40 px (2)" in capsys.readouterr().out
    rc = main([*args, "--aspects", "1,x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "W:H (8:3)" in err and "Traceback" not in err


def test_import_requires_src_for_real_kinds(tmp_path, capsys):
    rc = main(["data", "import", "neu-det", "--out", str(tmp_path / "x")])
    assert rc == 2 and "SRC" in capsys.readouterr().err


def test_import_unknown_kind_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "mnist", "src", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Real data (issue 2 "done when"): the CLI import and validate agree on the row counts.


@pytest.mark.shared
@pytest.mark.slow
def test_real_neu_det_import_and_validate(neu_det_dir, tmp_path, capsys):
    out_dir = tmp_path / "neu"
    assert main(["data", "import", "neu-det", str(neu_det_dir), "--out", str(out_dir)]) == 0
    assert "wrote 1800 rows" in capsys.readouterr().out
    rc = main(["data", "validate", str(out_dir / "manifest.csv"), "--backbone", "none"])
    out = capsys.readouterr().out
    assert rc == 0 and "rows: 1800 in file, 1800 usable, 0 skipped" in out


@pytest.mark.shared
@pytest.mark.slow
def test_real_covid_import_and_validate(covid_cxr_dir, tmp_path, capsys):
    out_dir = tmp_path / "covid"
    assert main(["data", "import", "covid-cxr", str(covid_cxr_dir), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "wrote 575 rows" in out and "skipped 14" in out
    rc = main(
        [
            "data",
            "validate",
            str(out_dir / "manifest.csv"),
            "--backbone",
            "none",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0 and "575 usable, 0 skipped" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["errors"] == [] and sum(report["split_counts"].values()) == 575


def test_validate_geometry_compares_policies_and_writes_json(tmp_path, capsys):
    save_rgb(tmp_path / "strip.png", (1024, 256))
    boxes = json.dumps([[10, 100, 60, 150, "scratch"], [960, 100, 1010, 150, "scratch"]])
    path = write_manifest(
        [
            ManifestRow(
                "strip.png", "two scratches", ["scratch"], split="test", meta={"boxes": boxes}
            )
        ],
        tmp_path / "m.csv",
    )
    out_json = tmp_path / "v.json"
    argv = ["data", "validate", str(path), "--backbone", "none", "--image-size", "224"]
    rc = main([*argv, "--fit", "crop", "--fit", "letterbox", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0 and "result: USABLE" in out
    assert "geometry: fit crop at 224 px" in out and "geometry: fit letterbox at 224 px" in out
    assert "rows 1, images 1 (1 non-square), annotated findings 2" in out
    assert "2 of 2 annotated findings are outside the model's input under crop" in out
    assert "crop      2 cut off" in out and "letterbox 0 cut off" in out
    geometry = json.loads(out_json.read_text())["geometry"]
    assert [g["policy"] for g in geometry] == ["crop", "letterbox"]
    assert geometry[0]["classes"]["scratch"]["n_cut"] == 2
    assert geometry[1]["total"]["n_cut"] == 0 and geometry[1]["size"] == 224


def test_validate_geometry_needs_a_size(good_manifest, capsys):
    rc = main(["data", "validate", str(good_manifest), "--backbone", "none", "--fit", "crop"])
    assert rc == 2 and "--image-size" in capsys.readouterr().err
    rc = main(["data", "validate", str(good_manifest), "--backbone", "none"])
    assert rc == 0 and "geometry:" not in capsys.readouterr().out


def test_validate_geometry_takes_the_size_from_the_backbone(tmp_path, capsys):
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    bb_dir = save_backbone(tiny_open_clip_backbone("cnn", image_size=64), tmp_path / "bb")
    save_rgb(tmp_path / "a.png", (128, 64))
    boxes = json.dumps([[0, 0, 8, 8, "pit"]])
    path = write_manifest(
        [ManifestRow("a.png", "a pit", ["pit"], split="test", meta={"boxes": boxes})],
        tmp_path / "m.csv",
    )
    rc = main(["data", "validate", str(path), "--backbone", str(bb_dir), "--fit", "crop"])
    out = capsys.readouterr().out
    assert rc == 0 and "geometry: fit crop at 64 px" in out
    assert "1 of 1 annotated findings are outside the model's input under crop" in out
