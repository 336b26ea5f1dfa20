"""Box importers (voc, coco, yolo, deeppcb) on small layouts of real files, then DeepPCB itself."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from domainclip.datasets.importers import run_import
from domainclip.datasets.importers._boxes import pixel_box, primary_class
from domainclip.datasets.manifest import read_manifest
from domainclip.datasets.splits import check_leakage
from domainclip.errors import DataError


def _img(path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 90).save(path)
    return path


def _rows(result) -> dict[str, object]:
    return {r.group: r for r in read_manifest(result.manifest_path)}


def _boxes(row) -> list:
    return json.loads(row.meta["boxes"])


def test_pixel_box_widens_fractions_and_primary_class_ties():
    assert pixel_box(10.0, 5.0, 20.0, 9.0) == (10, 5, 20, 9)
    assert pixel_box(10.4, 5.6, 19.2, 8.9999999) == (10, 5, 20, 9)
    objs = [("b", (0, 0, 1, 1)), ("a", (0, 0, 1, 1))]
    assert primary_class(objs) == "b"  # tie, no order: first seen
    assert primary_class(objs, ["a", "b"]) == "a"  # tie: first in the class list
    assert primary_class([*objs, ("b", (1, 1, 2, 2))], ["a", "b"]) == "b"  # most boxes wins


# ----------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_xml(objects, size=(200, 100)) -> str:
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"
        f"{body}</annotation>"
    )


def _voc_tree(root: Path) -> None:
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    for i in range(6):  # lot_A_* and lot_B_* images, one dent each
        _img(root / "JPEGImages" / f"lot{'AB'[i % 2]}_{i}.jpg")
        (ann / f"lot{'AB'[i % 2]}_{i}.xml").write_text(_voc_xml([("dent", (10, 10, 30, 30))]))
    _img(root / "JPEGImages" / "mixed.jpg")
    (ann / "mixed.xml").write_text(
        _voc_xml(
            [("dent", (0, 0, 20, 20)), ("rust", (150, 60, 190, 95)), ("rust", (150, 5, 170, 20))]
        )
    )
    _img(root / "JPEGImages" / "over.jpg")  # the box reaches 20 px past the right edge
    (ann / "over.xml").write_text(_voc_xml([("rust", (180.5, 10, 220, 40))]))
    _img(root / "JPEGImages" / "empty.jpg")
    (ann / "empty.xml").write_text(_voc_xml([]))
    _img(root / "JPEGImages" / "noname.jpg")
    (ann / "noname.xml").write_text(_voc_xml([("", (1, 1, 5, 5))]))
    _img(root / "JPEGImages" / "unannotated.jpg")
    _img(root / "JPEGImages" / "wrongsize.jpg", (100, 100))
    (ann / "wrongsize.xml").write_text(_voc_xml([("dent", (1, 1, 9, 9))]))
    (ann / "ghost.xml").write_text(_voc_xml([("dent", (1, 1, 9, 9))]))


def test_voc_rows_labels_boxes_clipping_and_skips(tmp_path):
    src = tmp_path / "voc"
    _voc_tree(src)
    result = run_import(
        "voc", src, tmp_path / "out", surface="steel sheet", val_frac=0.2, test_frac=0.2
    )
    assert result.n_rows == 9  # 6 lots + mixed + over + wrongsize
    assert result.skipped == {"malformed_annotation": 1, "missing_annotation": 1, "no_boxes": 1}
    assert result.warnings == {
        "annotation_without_image": 1,
        "mixed_classes": 1,
        "size_mismatch": 1,
    }
    assert result.clipped == 1 and "clipped 1 box" in result.summary()
    rows = _rows(result)
    # rust has two boxes, dent one: the label is rust, the text names both, rust first.
    assert rows["mixed"].label == ["rust"]
    assert rows["mixed"].text.startswith("two ") and "dent" in rows["mixed"].text
    assert rows["mixed"].text.endswith("a steel sheet")
    assert _boxes(rows["mixed"])[1] == [150, 60, 190, 95, "rust"]
    # 180.5 is widened to 180; 220 is clipped to the image's 200.
    assert _boxes(rows["over"]) == [[180, 10, 200, 40, "rust"]]
    assert rows["wrongsize"].meta["width"] == "100"  # the image's real size wins over <size>
    assert rows["lotA_0"].meta["text_source"] == "describe_boxes"
    assert {r.split for r in rows.values()} == {"train", "val", "test"}
    multi = run_import("voc", src, tmp_path / "multi", multi_label=True, empty_label="good")
    rows = _rows(multi)
    assert rows["mixed"].label == ["rust", "dent"]
    assert rows["empty"].label == ["good"] and _boxes(rows["empty"]) == []
    assert rows["empty"].text == "a clean surface with no visible defects"
    assert multi.n_rows == 10 and "no_boxes" not in multi.skipped


def test_voc_group_pattern_keeps_lots_together_and_refuse(tmp_path):
    src = tmp_path / "voc"
    _voc_tree(src)
    result = run_import("voc", src, tmp_path / "out", group_pattern=r"^lot([AB])_", seed=3)
    m = read_manifest(result.manifest_path)
    lots = {}
    for r in m:
        if r.group in ("A", "B"):
            lots.setdefault(r.group, set()).add(r.split)
    assert set(lots) == {"A", "B"} and all(len(s) == 1 for s in lots.values())
    assert not check_leakage(m.rows)
    with pytest.raises(DataError, match=r"over\.xml: box 1 \[180, 10, 220, 40\].*--outside clip"):
        run_import("voc", src, tmp_path / "refuse", outside="refuse")


def test_voc_xml_beside_images_and_missing_folders(tmp_path):
    flat = tmp_path / "flat"
    _img(flat / "a.png")
    (flat / "a.xml").write_text(_voc_xml([("crack", (5, 5, 100, 10))]))
    _img(flat / "b.png")
    (flat / "b.xml").write_text(_voc_xml([("crack", (5, 5, 10, 90))]))
    result = run_import("voc", flat, tmp_path / "out", val_frac=0, test_frac=0)
    assert result.n_rows == 2 and _boxes(_rows(result)["a"]) == [[5, 5, 100, 10, "crack"]]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no Annotations/ folder"):
        run_import("voc", tmp_path / "nothing", tmp_path / "o2")


# ----------------------------------------------------------------------------------------------
# COCO


def _coco_tree(root: Path) -> dict:
    for name, size in (
        ("a.jpg", (200, 100)),
        ("b.jpg", (200, 100)),
        ("c.jpg", (64, 64)),
        ("d.jpg", (64, 64)),
    ):
        _img(root / "images" / name, size)
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},
            {"id": 3, "file_name": "c.jpg", "width": 64, "height": 64},
            {"id": 4, "file_name": "d.jpg"},
            {"id": 5, "file_name": "gone.jpg"},
        ],
        "categories": [{"id": 7, "name": "scratch"}, {"id": 9, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10.5, 20, 30, 5.25]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [150, 50, 60, 60]},
            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [0, 0, 20, 20]},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [100, 0, 20, 20]},
            {"id": 5, "image_id": 4, "category_id": 7, "bbox": [1, 2, 3]},
            {"id": 6, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4]},
            {"id": 7, "image_id": 99, "category_id": 7, "bbox": [1, 2, 3, 4]},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances.json").write_text(json.dumps(data))
    return data


def test_coco_rows_boxes_ties_empty_and_skips(tmp_path):
    src = tmp_path / "coco"
    _coco_tree(src)
    result = run_import("coco", src, tmp_path / "out", val_frac=0, test_frac=0)
    assert result.n_rows == 2
    assert result.skipped == {"malformed_annotation": 1, "missing_image": 1, "no_boxes": 1}
    assert result.warnings == {"annotation_without_image": 1, "mixed_classes": 2}
    assert result.clipped == 1  # a's dent: x 150 + 60 = 210 > 200
    rows = _rows(result)
    # xywh -> xmin ymin xmax ymax, widened to whole pixels: 10.5 -> 10, 20 + 5.25 -> 26.
    assert _boxes(rows["a"]) == [[10, 20, 41, 26, "scratch"], [150, 50, 200, 100, "dent"]]
    # One box each: the tie goes to the category listed first (scratch, id 7).
    assert rows["a"].label == ["scratch"] and rows["b"].label == ["scratch"]
    assert rows["a"].text.endswith("of a surface")
    good = run_import(
        "coco", src, tmp_path / "good", empty_label="good", empty_text="a flawless part"
    )
    rows = _rows(good)
    assert rows["c"].label == ["good"] and rows["c"].text == "a flawless part"
    assert rows["c"].meta["boxes"] == "[]" and good.n_rows == 3


def test_coco_json_errors_name_the_entry(tmp_path):
    src = tmp_path / "coco"
    data = _coco_tree(src)
    path = src / "annotations" / "instances.json"
    data["categories"][1]["name"] = " "
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"categories\[1\] \(id 9\) has no name"):
        run_import("coco", src, tmp_path / "o1")
    data["categories"][1]["name"] = "dent"
    data["annotations"][2]["category_id"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[2\] \(id 3\) has category_id 3.*7, 9"):
        run_import("coco", src, tmp_path / "o2")
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataError, match=r"not valid JSON \(line 2, column"):
        run_import("coco", src, tmp_path / "o3")


# ----------------------------------------------------------------------------------------------
# YOLO


def _yolo_tree(root: Path) -> None:
    _img(root / "images" / "train" / "a.jpg", (200, 100))
    _img(root / "images" / "train" / "b.png", (200, 100))
    _img(root / "images" / "val" / "a.jpg", (100, 100))
    _img(root / "images" / "val" / "bg.jpg", (100, 100))
    _img(root / "images" / "val" / "bad.jpg", (100, 100))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.1 0.1\n1 0.9 0.5 0.1 0.2\n"
    )
    (root / "labels" / "train" / "b.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # reaches past x = 1
    (root / "labels" / "val" / "a.txt").write_text("0 0.1 0.1 0.3 0.1 0.3 0.3\n")  # a triangle
    (root / "labels" / "val" / "bad.txt").write_text("0 50 50 10 10\n")  # pixels, not fractions
    (root / "labels" / "val" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text("names:\n  0: scratch\n  1: pit\n")


def test_yolo_rows_boxes_groups_and_skips(tmp_path):
    src = tmp_path / "yolo"
    _yolo_tree(src)
    result = run_import("yolo", src, tmp_path / "out", val_frac=0, test_frac=0)
    assert result.n_rows == 3
    assert result.skipped == {"malformed_annotation": 1, "missing_annotation": 1}
    assert result.warnings == {"annotation_without_image": 1, "mixed_classes": 1}
    assert result.clipped == 1
    rows = _rows(result)
    assert set(rows) == {"train/a", "train/b", "val/a"}  # same stem in two folders: two groups
    # cx 0.5, w 0.2 of 200 px -> 80..120; cy 0.5, h 0.4 of 100 px -> 30..70.
    assert _boxes(rows["train/a"])[0] == [80, 30, 120, 70, "pit"]
    assert rows["train/a"].label == ["pit"] and "scratch" in rows["train/a"].text
    assert _boxes(rows["train/b"]) == [[170, 40, 200, 60, "scratch"]]
    assert _boxes(rows["val/a"]) == [[10, 10, 30, 30, "scratch"]]  # the polygon's bounding box
    bg = run_import("yolo", src, tmp_path / "bg", empty_label="good", val_frac=0, test_frac=0)
    assert _rows(bg)["val/bg"].label == ["good"] and bg.n_rows == 4


def test_yolo_class_name_errors_name_file_and_line(tmp_path):
    src = tmp_path / "yolo"
    _yolo_tree(src)
    (src / "data.yaml").unlink()
    with pytest.raises(DataError, match="no class-name file.*classes.txt"):
        run_import("yolo", src, tmp_path / "o1")
    (src / "classes.txt").write_text("scratch\n\npit\n")
    with pytest.raises(DataError, match=r"classes.txt:2 is empty, so class 1 has no name"):
        run_import("yolo", src, tmp_path / "o2")
    (src / "classes.txt").write_text("scratch\n")
    with pytest.raises(
        DataError, match=r"train/a.txt:1: class id 1, but .*classes.txt names 1 classes"
    ):
        run_import("yolo", src, tmp_path / "o3")


# ----------------------------------------------------------------------------------------------
# DeepPCB


def _pcb_tree(root: Path) -> None:
    for group, boards in (("00041", ("00041000", "00041001")), ("12000", ("12000000", "12000001"))):
        image_dir = root / "PCBData" / f"group{group}" / group
        ann_dir = root / "PCBData" / f"group{group}" / f"{group}_not"
        ann_dir.mkdir(parents=True)
        for b in boards:
            _img(image_dir / f"{b}_test.jpg", (640, 640))
            _img(image_dir / f"{b}_temp.jpg", (640, 640))
    ann = root / "PCBData" / "group00041" / "00041_not"
    (ann / "00041000.txt").write_text("10 10 40 40 1\n100 100 130 130 4\n200 200 230 230 4\n")
    (ann / "00041001.txt").write_text("10 10 40 40 6\n600 600 660 630 3")  # no final newline
    ann = root / "PCBData" / "group12000" / "12000_not"
    (ann / "12000000.txt").write_text("1,2,30,40,2\n")
    (ann / "12000001.txt").write_text("1 2 30 40\n")  # malformed: board skipped


def test_deeppcb_pairs_labels_groups(tmp_path):
    src = tmp_path / "pcb"
    _pcb_tree(src)
    result = run_import(
        "deeppcb", src, tmp_path / "out", val_frac=0.3, test_frac=0.3, group_by="board"
    )
    assert result.n_rows == 6 and result.skipped == {"malformed_annotation": 1}
    assert result.clipped == 1
    m = read_manifest(result.manifest_path)
    by = {Path(r.image).name: r for r in m}
    test = by["00041000_test.jpg"]
    assert test.label == ["spur"] and test.group == "00041000"  # two spurs beat one open
    assert test.text.startswith("two small spurs") and "open circuit" in test.text
    assert test.text.endswith("of a printed circuit board")
    assert _boxes(test)[0] == [10, 10, 40, 40, "open"]
    assert by["00041001_test.jpg"].label == ["mousebite"]  # tie 1-1: the lower type id (3 < 6)
    assert _boxes(by["00041001_test.jpg"])[1] == [600, 600, 640, 630, "mousebite"]
    temp = by["00041000_temp.jpg"]
    assert temp.label == ["no_defect"] and temp.meta["boxes"] == "[]"
    assert temp.text == "a clean printed circuit board with no visible defects"
    assert temp.split == test.split and temp.meta["pair"].endswith("00041000_test.jpg")
    assert by["12000000_test.jpg"].label == ["short"]  # comma-separated line
    assert not check_leakage(m.rows)
    grouped = run_import("deeppcb", src, tmp_path / "g", multi_label=True)  # default: board-group
    rows = read_manifest(grouped.manifest_path).rows
    assert {r.group for r in rows} == {"group00041", "group12000"}
    assert len({r.split for r in rows if r.group == "group00041"}) == 1
    assert next(r for r in rows if r.image.endswith("00041000_test.jpg")).label == ["spur", "open"]


def test_deeppcb_unknown_type_names_file_and_line(tmp_path):
    src = tmp_path / "pcb"
    _pcb_tree(src)
    (src / "PCBData" / "group12000" / "12000_not" / "12000001.txt").write_text(
        "1 2 30 40 2\n1 2 3 4 7\n"
    )
    with pytest.raises(DataError, match=r"12000001.txt:2: defect type 7; DeepPCB types are 1 open"):
        run_import("deeppcb", src, tmp_path / "out")


@pytest.mark.shared
def test_deeppcb_real_data(deeppcb_dir, tmp_path):
    result = run_import("deeppcb", deeppcb_dir, tmp_path / "pcb", group_by="board")
    assert result.n_rows == 3000 and result.skipped == {} and result.clipped == 0
    m = read_manifest(result.manifest_path)
    tests = [r for r in m if r.image.endswith("_test.jpg")]
    temps = [r for r in m if r.image.endswith("_temp.jpg")]
    assert len(tests) == 1500 and len(temps) == 1500
    assert {r.label[0] for r in temps} == {"no_defect"}
    assert {r.label[0] for r in tests} == {
        "open",
        "short",
        "mousebite",
        "spur",
        "spurious_copper",
        "pin_hole",
    }
    classes = Counter(b[4] for r in tests for b in _boxes(r))
    assert len(classes) == 6 and sum(classes.values()) == 10013  # every non-blank line
    assert not check_leakage(m.rows) and len({r.group for r in m}) == 1500
    split_of = {r.group: r.split for r in tests}
    assert all(split_of[r.group] == r.split for r in temps)  # a board and its template together
    assert Counter(r.split for r in m) == {"train": 2100, "val": 450, "test": 450}
    for r in tests[::101]:
        assert (result.manifest_path.parent / r.image).resolve().is_file()
        assert all(0 <= b[0] < b[2] <= 640 and 0 <= b[1] < b[3] <= 640 for b in _boxes(r))
    strict = run_import("deeppcb", deeppcb_dir, tmp_path / "g")  # default: board-group
    groups = read_manifest(strict.manifest_path)
    assert len({r.group for r in groups}) == 11 and not check_leakage(groups.rows)
