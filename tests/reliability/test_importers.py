"""Reliability: box importers (voc, coco, yolo, deeppcb) on broken layouts, through the CLI.

Every case runs `domainclip data import ...` and asserts the exit code and what the user reads.
Per-file skip messages go to the log, not to stdout: the `_LOGGED` table (a small helper of this
file, on top of harness.py) adds a regex the captured log must match, so a counted skip also
names its file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from domainclip.datasets.manifest import read_manifest
from tests.reliability.harness import Case, Outcome, run_case


def _img(path: Path, size: tuple[int, int] = (100, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 90).save(path)
    return path


def _import(kind: str, src: Path, tmp: Path, *flags: str) -> list[str]:
    return ["data", "import", kind, str(src), "--out", str(tmp / "out"), *flags]


def _rows(n: int):
    def check(tmp: Path, outcome: Outcome) -> None:
        assert len(read_manifest(tmp / "out" / "manifest.csv")) == n

    return check


# -- layouts --------------------------------------------------------------------------------------


def _voc(tmp: Path, box: str = "<xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>40</ymax>") -> Path:
    src = tmp / "voc"
    for stem in ("a", "b"):
        _img(src / "JPEGImages" / f"{stem}.jpg")
    ann = src / "Annotations"
    ann.mkdir(parents=True)
    (ann / "a.xml").write_text(f"<annotation><object><name>dent</name><bndbox>{box}</bndbox></object></annotation>")
    (ann / "b.xml").write_text(
        "<annotation><object><name>dent</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    return src


def _voc_outside(tmp: Path, *flags: str) -> list[str]:
    box = "<xmin>80</xmin><ymin>10</ymin><xmax>130</xmax><ymax>40</ymax>"
    return _import("voc", _voc(tmp, box), tmp, *flags)


def _voc_malformed(tmp: Path) -> list[str]:
    src = _voc(tmp)
    (src / "Annotations" / "a.xml").write_text("<annotation><object><name>dent")
    return _import("voc", src, tmp)


def _voc_all_malformed(tmp: Path) -> list[str]:
    src = _voc(tmp)
    for stem in ("a", "b"):
        (src / "Annotations" / f"{stem}.xml").write_text("<annotation><object>")
    return _import("voc", src, tmp)


def _coco(tmp: Path, **change) -> Path:
    src = tmp / "coco"
    _img(src / "images" / "a.jpg")
    _img(src / "images" / "b.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "lost.jpg"}],
        "categories": [{"id": 1, "name": "dent"}, {"id": 2, "name": "rust"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20]},
            {"id": 12, "image_id": 3, "category_id": 2, "bbox": [5, 5, 20, 20]},
        ],
    }
    for key, value in change.items():
        section, index, field = key.split("__")
        data[section][int(index)][field] = value
    (src / "train.json").write_text(json.dumps(data))
    return src


def _coco_bad_json(tmp: Path) -> list[str]:
    src = _coco(tmp)
    (src / "train.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    return _import("coco", src, tmp)


def _yolo(tmp: Path, names: str = "dent\nrust\n", label: str = "1 0.5 0.5 0.2 0.2\n") -> Path:
    src = tmp / "yolo"
    _img(src / "images" / "a.jpg")
    _img(src / "images" / "b.jpg")
    (src / "labels").mkdir(parents=True)
    (src / "labels" / "a.txt").write_text(label)
    (src / "labels" / "b.txt").write_text("0 0.2 0.2 0.1 0.1\n")
    (src / "classes.txt").write_text(names)
    return src


def _pcb(tmp: Path, line: str = "10 10 40 40 2") -> Path:
    src = tmp / "deeppcb"
    for board in ("00041000", "00041001"):
        _img(src / "PCBData" / "group00041" / "00041" / f"{board}_test.jpg", (640, 640))
        _img(src / "PCBData" / "group00041" / "00041" / f"{board}_temp.jpg", (640, 640))
    ann = src / "PCBData" / "group00041" / "00041_not"
    ann.mkdir(parents=True)
    (ann / "00041000.txt").write_text("5 5 30 30 1\n")
    (ann / "00041001.txt").write_text(line + "\n")
    return src


CASES = [
    Case("unknown layout", lambda t: ["data", "import", "pascal", str(t), "--out", str(t / "o")],
         r"invalid choice: 'pascal'.*'voc', 'coco', 'yolo', 'deeppcb'"),
    Case("voc box outside the image is clipped and counted", lambda t: _voc_outside(t),
         r"wrote 2 rows.*clipped 1 box", code=0, check=_rows(2)),
    Case("voc box outside the image, --outside refuse", lambda t: _voc_outside(t, "--outside", "refuse"),
         r"error: voc: a\.xml: box 1 \[80, 10, 130, 40\] of 'dent' reaches past the 100x100 image.*--outside clip"),
    Case("voc malformed XML is a counted skip", _voc_malformed,
         r"wrote 1 rows.*skipped 1 \(malformed_annotation: 1\)", code=0, check=_rows(1)),
    Case("voc nothing usable", _voc_all_malformed,
         r"error: voc: no usable rows.*malformed_annotation: 2.*--help"),
    Case("voc source missing", lambda t: _import("voc", t / "nope", t),
         r"error: voc: source folder not found: .*nope"),
    Case("coco image file missing is a counted skip", lambda t: _import("coco", _coco(t), t),
         r"wrote 2 rows.*skipped 1 \(missing_image: 1\)", code=0, check=_rows(2)),
    Case("coco malformed JSON", _coco_bad_json,
         r"error: coco: .*train\.json is not valid JSON \(line 2, column \d+"),
    Case("coco category without a name", lambda t: _import("coco", _coco(t, categories__1__name=""), t),
         r"error: coco: .*categories\[1\] \(id 2\) has no name"),
    Case("coco unknown category id", lambda t: _import("coco", _coco(t, annotations__1__category_id=5), t),
         r"error: coco: .*annotations\[1\] \(id 11\) has category_id 5, which is not among the categories \(1, 2\)"),
    Case("yolo class id beyond the names", lambda t: _import("yolo", _yolo(t, label="4 0.5 0.5 0.1 0.1\n"), t),
         r"error: yolo: .*a\.txt:1: class id 4, but .*classes\.txt names 2 classes \(ids 0-1\)"),
    Case("yolo class with no name", lambda t: _import("yolo", _yolo(t, names="dent\n\nrust\n"), t),
         r"error: yolo: .*classes\.txt:2 is empty, so class 1 has no name"),
    Case("yolo no class-name file", lambda t: _import("yolo", _yolo(t), t, "--class-names", "names.yaml"),
         r"error: yolo: class-name file .*names\.yaml not found"),
    Case("yolo malformed label line is a counted skip",
         lambda t: _import("yolo", _yolo(t, label="1 0.5 0.5 0.2\n"), t),
         r"wrote 1 rows.*skipped 1 \(malformed_annotation: 1\)", code=0, check=_rows(1)),
    Case("yolo pixel coordinates", lambda t: _import("yolo", _yolo(t, label="1 50 50 20 20\n"), t),
         r"skipped 1 \(malformed_annotation: 1\)", code=0, check=_rows(1)),
    Case("deeppcb unknown defect type", lambda t: _import("deeppcb", _pcb(t, "1 2 30 40 9"), t),
         r"error: deeppcb: .*00041001\.txt:1: defect type 9; DeepPCB types are 1 open, 2 short"),
    Case("deeppcb malformed line skips its board", lambda t: _import("deeppcb", _pcb(t, "1 2 30"), t),
         r"wrote 2 rows.*malformed_annotation: 1", code=0, check=_rows(2)),
    Case("deeppcb wrong folder", lambda t: _import("deeppcb", _voc(t), t),
         r"error: deeppcb: no group\*/ folders in .*voc"),
    Case("deeppcb bad --group-by", lambda t: _import("deeppcb", _pcb(t), t, "--group-by", "lot"),
         r"invalid choice: 'lot'"),
    Case("option of another importer", lambda t: _import("coco", _coco(t), t, "--group-by", "board"),
         r"error: coco: unknown option\(s\) group_by"),
]

# Case name -> regex the log must match (the file and line of a counted skip or clip).
_LOGGED = {
    "voc box outside the image is clipped and counted": r"box clipped: a\.xml: box 1 \[80, 10, 130, 40\].*clipped to \[80, 10, 100, 40\]",
    "voc malformed XML is a counted skip": r"malformed_annotation.*a\.xml",
    "coco image file missing is a counted skip": r"missing_image.*lost\.jpg \(image id 3\)",
    "yolo malformed label line is a counted skip": r"a\.txt:1: 4 values; expected 5",
    "yolo pixel coordinates": r"a\.txt:1: coordinates above 1 \(50\).*look like pixels",
    "deeppcb malformed line skips its board": r"00041001\.txt:1: 3 values; expected 5 \(x1 y1 x2 y2 type\)",
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_importer_case(case: Case, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level("WARNING", logger="domainclip")
    run_case(case, tmp_path, capsys)
    if case.name in _LOGGED:
        assert re.search(_LOGGED[case.name], caplog.text, re.S), caplog.text[-2000:]
