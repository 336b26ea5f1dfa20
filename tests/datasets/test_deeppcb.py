"""DeepPCB importer: a small layout built here (real JPEGs and annotation files) and the shared set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainclip.cli import main
from domainclip.datasets import read_manifest
from domainclip.datasets.importers import run_import
from domainclip.datasets.splits import assert_no_leakage
from domainclip.errors import DataError


def _board(folder: Path, ann: Path, board: str, lines: list[str], template: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.full((64, 96), 255, np.uint8))
    img.save(folder / f"{board}_test.jpg")
    if template:
        img.save(folder / f"{board}_temp.jpg")
    (ann / f"{board}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = tmp_path / "DeepPCB" / "PCBData"
    for g in range(4):
        gid = f"{g:05d}"
        images, ann = root / f"group{gid}" / gid, root / f"group{gid}" / f"{gid}_not"
        _board(images, ann, f"{gid}000", ["10 10 20 20 1", "30 30 40 40 4", "50 5 60 15 4"])
        _board(images, ann, f"{gid}001", ["80 50 100 70 2"])  # clipped to 96 x 64
    bad = root / "group00009"
    _board(bad / "00009", bad / "00009_not", "00009000", ["1 2 3"])  # malformed
    _board(bad / "00009", bad / "00009_not", "00009001", ["1 2 3 4 9"])  # unknown type
    _board(bad / "00009", bad / "00009_not", "00009002", ["1 1 9 9 6"], template=False)
    return tmp_path / "DeepPCB"


def test_boards_and_templates_become_rows_with_boxes_texts_and_groups(layout, tmp_path):
    res = run_import("deeppcb", layout, tmp_path / "out", val_frac=0.2, test_frac=0.2)
    assert res.n_rows == 4 * 4 + 1  # 8 boards + 8 templates + one board without template
    assert res.skipped == {"malformed_annotation": 2}
    assert res.warnings == {"box_clipped": 4, "missing_template": 1}
    man = read_manifest(res.manifest_path)
    by_image = {Path(r.image).name: r for r in man.rows}
    board = by_image["00000000_test.jpg"]
    assert board.label == ["spur"]  # two spurs beat one open
    assert json.loads(board.meta["boxes"]) == [
        [10, 10, 20, 20, "open"],
        [30, 30, 40, 40, "spur"],
        [50, 5, 60, 15, "spur"],
    ]
    assert "two small spurs" in board.text and "open circuit" in board.text
    assert board.text.endswith("printed circuit board")
    clipped = by_image["00001001_test.jpg"]
    assert json.loads(clipped.meta["boxes"]) == [[80, 50, 96, 64, "short"]]
    temp = by_image["00000000_temp.jpg"]
    assert temp.label == ["no defect"] and temp.group == board.group == "group00000"
    assert json.loads(temp.meta["boxes"]) == []
    assert by_image["00009002_test.jpg"].label == ["pin-hole"]
    assert_no_leakage(man.rows)
    assert {r.split for r in man.rows if r.group == "group00000"} == {board.split}


def test_group_by_board_and_multi_label(layout, tmp_path):
    res = run_import("deeppcb", layout, tmp_path / "o", group_by="board", multi_label=True)
    man = read_manifest(res.manifest_path)
    board = next(r for r in man.rows if r.image.endswith("00000000_test.jpg"))
    assert board.label == ["spur", "open"] and board.group == "00000000"
    with pytest.raises(DataError, match="group-by"):
        run_import("deeppcb", layout, tmp_path / "x", group_by="lot")


def test_not_a_deeppcb_layout_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    rc = main(["data", "import", "deeppcb", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no group*/ folders" in err and "Traceback" not in err


@pytest.mark.shared
def test_shared_deeppcb_import(deeppcb_dir, tmp_path):
    res = run_import("deeppcb", deeppcb_dir, tmp_path / "pcb")
    assert res.n_rows == 3000 and res.n_skipped == 0
    man = read_manifest(res.manifest_path)
    labels = [r.label[0] for r in man.rows]
    assert labels.count("no defect") == 1500
    assert set(labels) == {"open", "short", "mousebite", "spur", "copper", "pin-hole", "no defect"}
    n_boxes = sum(len(json.loads(r.meta["boxes"])) for r in man.rows)
    assert n_boxes == 10013  # every non-blank annotation line of the release
    assert len({r.group for r in man.rows}) == 11
    assert_no_leakage(man.rows)
