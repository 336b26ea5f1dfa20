"""Importers: NEU-DET, COVID CXR, folder-per-class and the synthetic defect generator."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from domainclip.datasets.describe import count_word
from domainclip.datasets.importers import run_import
from domainclip.datasets.importers.covid_cxr import decode_mixed, finding_sentence
from domainclip.datasets.importers.synthetic import CLEAN_TEXT, render_sample
from domainclip.datasets.manifest import read_manifest
from domainclip.datasets.splits import check_leakage
from domainclip.errors import DataError


def _gray(path: Path, size: tuple[int, int] = (40, 30), value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _resolves_to(manifest_path: Path, image: str) -> Path:
    return (manifest_path.parent / image).resolve()


# ----------------------------------------------------------------------------------------------
# run_import dispatch


def test_unknown_kind_lists_the_valid_kinds(tmp_path):
    with pytest.raises(DataError, match="neu-det, covid-cxr, folder, synthetic"):
        run_import("imagenet", tmp_path, tmp_path / "out")


def test_unknown_option_and_bad_fractions_are_rejected(tmp_path):
    with pytest.raises(DataError, match="unknown option.*templates.*valid: n, size, classes"):
        run_import("synthetic", None, tmp_path, templates={"a": "b"})
    with pytest.raises(DataError, match="val_frac"):
        run_import("synthetic", None, tmp_path, val_frac=1.5)
    with pytest.raises(DataError, match="below 1"):
        run_import("synthetic", None, tmp_path, val_frac=0.5, test_frac=0.5)


def test_missing_source_folder_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=str(missing)):
        run_import("neu-det", missing, tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_same_seed_gives_identical_bytes(tmp_path):
    a = run_import("synthetic", None, tmp_path / "a", n=12, size=48, seed=3)
    b = run_import("synthetic", None, tmp_path / "b", n=12, size=48, seed=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert files_a == files_b and len(files_a) == 25  # 12 images, 12 masks, manifest
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a.manifest_path.read_text() == b.manifest_path.read_text()
    run_import("synthetic", None, tmp_path / "c", n=12, size=48, seed=4)
    differ = [
        (tmp_path / "a" / "images" / p.name).read_bytes() != p.read_bytes()
        for p in sorted((tmp_path / "c" / "images").iterdir())
    ]
    assert all(differ)


@pytest.mark.parametrize("cls", ["scratch", "pit", "crack", "patch", "clean"])
def test_synthetic_mask_is_exactly_the_changed_pixels(cls):
    for i in range(6):
        s = render_sample(cls, 96, np.random.default_rng([11, i]))
        inside = s.mask == 255
        assert set(np.unique(s.mask)) <= {0, 255}
        # Outside the mask nothing was drawn; inside, every pixel differs from the surface.
        assert np.array_equal(s.image[~inside], s.background[~inside])
        assert np.all(s.image[inside] != s.background[inside])
        if cls == "clean":
            assert not inside.any() and s.boxes == []
            continue
        assert inside.any() and s.boxes
        covered = np.zeros_like(inside)
        for x0, y0, x1, y1, name in s.boxes:
            assert name == cls
            covered[y0:y1, x0:x1] = True
            # Boxes are tight: each edge row/column of a box holds mask pixels.
            sub = inside[y0:y1, x0:x1]
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        assert not (inside & ~covered).any(), "mask pixels outside every box"
        if cls in ("pit", "patch"):
            # Blobs never touch, so what a viewer counts is what the text counts.
            assert ndimage.label(inside)[1] == len(s.boxes)


def test_synthetic_defects_differ_by_class():
    # Cheap physical checks that the classes look different (a CNN check is in the report):
    # pits are small dark blobs, patches large blobs, scratches and cracks thin lines, and
    # cracks are dark while scratches are mostly bright.
    def stats(cls):
        areas, signs = [], []
        for i in range(12):
            s = render_sample(cls, 128, np.random.default_rng([5, i]))
            for x0, y0, x1, y1, _ in s.boxes:
                m = s.mask[y0:y1, x0:x1] == 255
                areas.append(m.sum() / ((x1 - x0) * (y1 - y0)))  # fill ratio of the box
                diff = s.image[y0:y1, x0:x1][m].astype(int) - s.background[y0:y1, x0:x1][m]
                signs.append(np.sign(diff.mean()))
        return np.median(areas), np.mean(signs)

    fill = {c: stats(c) for c in ("scratch", "pit", "crack", "patch")}
    assert fill["pit"][0] > 0.6 and fill["patch"][0] > 0.4  # compact blobs fill their box
    assert fill["scratch"][0] < 0.3 and fill["crack"][0] < 0.3  # lines do not
    assert fill["crack"][1] == -1.0 and fill["pit"][1] == -1.0  # always darker
    assert fill["scratch"][1] > 0  # mostly brighter


def test_synthetic_manifest_rows_masks_boxes_and_texts(tmp_path):
    start = time.perf_counter()
    result = run_import("synthetic", None, tmp_path, n=48, size=128, seed=0)
    elapsed = time.perf_counter() - start
    print(f"synthetic: 48 images at 128 px in {elapsed:.2f} s ({1000 * elapsed / 48:.1f} ms each)")
    m = read_manifest(result.manifest_path)
    assert len(m) == result.n_rows == 48 and m.n_skipped == 0
    counts = Counter(r.label[0] for r in m)
    assert set(counts) == {"scratch", "pit", "crack", "patch", "clean"}
    assert sorted(counts.values()) == [9, 9, 10, 10, 10]  # 48 over 5 classes
    assert {r.split for r in m} == {"train", "val", "test"} and not check_leakage(m.rows)
    for row in m:
        assert m.image_path(row).is_file()
        boxes = json.loads(row.meta["boxes"])
        mask = np.array(Image.open(m.root / row.meta["mask"]))
        assert mask.shape == (128, 128)
        if row.label == ["clean"]:
            assert row.text == CLEAN_TEXT and not boxes and not mask.any()
            continue
        assert mask.any() and boxes
        inside_boxes = np.zeros(mask.shape, bool)
        for x0, y0, x1, y1, cls in boxes:
            assert cls == row.label[0]
            inside_boxes[y0:y1, x0:x1] = True
        assert not (mask.astype(bool) & ~inside_boxes).any()
        # The text states the true number of drawn defects.
        n = len(boxes)
        first_word = row.text.split()[0]
        assert first_word == (count_word(n) if n > 1 else "a"), (row.text, n)
        assert row.text.endswith("a metal surface")


def test_synthetic_class_balance_with_uneven_n(tmp_path):
    result = run_import("synthetic", None, tmp_path, n=13, size=32, classes=["pit", "crack"])
    labels = Counter(r.label[0] for r in read_manifest(result.manifest_path))
    assert sorted(labels.values()) == [6, 7] and set(labels) == {"pit", "crack"}


def test_synthetic_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="unknown or no classes.*dent"):
        run_import("synthetic", None, tmp_path, classes=["dent"])
    with pytest.raises(DataError, match="at least 32"):
        run_import("synthetic", None, tmp_path, size=16)
    with pytest.raises(DataError, match="takes no source folder"):
        run_import("synthetic", tmp_path, tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# folder


def _class_tree(root: Path) -> None:
    _gray(root / "rust_spot" / "P01_a.png")
    _gray(root / "rust_spot" / "P02_b.jpg")
    _gray(root / "rust_spot" / "nested" / "P01_c.png")
    _gray(root / "ok" / "P03_d.png")
    (root / "ok" / "notes.txt").write_text("not an image")
    (root / "ok" / "P04_zero.png").write_bytes(b"")
    (root / "empty_class").mkdir()
    (root / ".hidden").mkdir()
    _gray(root / ".hidden" / "x.png")
    (root / "README.md").write_text("stray file")


def test_folder_import_counts_skips_and_resolves_paths(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _class_tree(src)
    result = run_import("folder", src, out)
    assert result.n_rows == 4
    assert result.skipped == {"empty_file": 1, "not_image": 1, "outside_class_folder": 1}
    assert result.warnings == {"empty_class_folder": 1}
    m = read_manifest(result.manifest_path)
    by_label = Counter(r.label[0] for r in m)
    assert by_label == {"rust_spot": 3, "ok": 1}
    texts = {r.label[0]: r.text for r in m}
    assert texts == {"rust_spot": "a photo of rust spot", "ok": "a photo of ok"}
    for row in m:
        assert not Path(row.image).is_absolute()
        resolved = _resolves_to(result.manifest_path, row.image)
        assert resolved.is_file() and src.resolve() in resolved.parents
    assert len({r.group for r in m}) == 4  # no pattern: each image its own group


def test_folder_templates_and_group_pattern(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _class_tree(src)
    yaml_file = tmp_path / "templates.yaml"
    yaml_file.write_text('rust_spot: "a steel part with a {class}"\n"*": "a clean {class} part"\n')
    result = run_import("folder", src, out, templates=str(yaml_file), group_pattern=r"^(P\d+)_")
    m = read_manifest(result.manifest_path)
    texts = {r.label[0]: r.text for r in m}
    assert texts == {"rust_spot": "a steel part with a rust spot", "ok": "a clean ok part"}
    groups = Counter(r.group for r in m)
    assert groups == {"P01": 2, "P02": 1, "P03": 1}
    assert len({r.split for r in m if r.group == "P01"}) == 1


def test_folder_bad_options(tmp_path):
    src = tmp_path / "src"
    _class_tree(src)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="must map class folder names"):
        run_import("folder", src, tmp_path / "o", templates=str(bad_yaml))
    with pytest.raises(DataError, match="needs a capture group"):
        run_import("folder", src, tmp_path / "o", group_pattern=r"P\d+")
    with pytest.raises(DataError, match="no class sub-folders"):
        (tmp_path / "flat").mkdir()
        _gray(tmp_path / "flat" / "a.png")
        run_import("folder", tmp_path / "flat", tmp_path / "o")


def test_folder_without_any_image_says_what_was_skipped(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no usable rows.*not_image: 1"):
        run_import("folder", tmp_path / "src", tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# NEU-DET (small hand-made tree, then the real data)


def _voc(objects: list[tuple[str, tuple[int, int, int, int]]], w: int = 200, h: int = 200) -> str:
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height></size>{body}</annotation>"


def _neu_tree(root: Path) -> None:
    for stem in ("scratches_1", "patches_2", "inclusion_3", "crazing_4", "pitted_surface_5"):
        _gray(root / "IMAGES" / f"{stem}.jpg", (200, 200))
    ann = root / "ANNOTATIONS"
    ann.mkdir()
    (ann / "scratches_1.xml").write_text(
        _voc([("scratches", (10, 5, 20, 90)), ("scratches", (30, 8, 40, 95))])
    )
    (ann / "patches_2.xml").write_text(
        _voc([("patches", (0, 80, 50, 140)), ("inclusion", (95, 95, 105, 105))])
    )
    (ann / "inclusion_3.xml").write_text("<annotation><object><name>inclusion</name>")
    (ann / "crazing_4.xml").write_text(_voc([("rolled-in_scale", (0, 0, 210, 200))]))
    # pitted_surface_5 has no XML; an XML without an image is only a warning.
    (ann / "orphan_9.xml").write_text(_voc([("patches", (1, 1, 5, 5))]))


def test_neu_det_layout_rows_and_bad_annotations(tmp_path):
    src, out = tmp_path / "neu", tmp_path / "out"
    _neu_tree(src)
    result = run_import("neu-det", src, out)
    assert result.n_rows == 3
    assert result.skipped == {"malformed_annotation": 1, "missing_annotation": 1}
    assert result.warnings == {
        "annotation_without_image": 1,
        "class_name_mismatch": 1,
        "mixed_classes": 1,
    }
    rows = {r.group: r for r in read_manifest(result.manifest_path)}
    assert rows["scratches_1"].text == "two long scratches in the upper left of a steel surface"
    assert rows["scratches_1"].label == ["scratches"]
    assert rows["patches_2"].label == ["patches"]
    assert rows["patches_2"].text.startswith("a medium patch on the left side and a small ")
    assert "inclusion in the centre of a steel surface" in rows["patches_2"].text
    # The boxes say rolled-in scale although the file is named crazing: trust the boxes, warn.
    assert rows["crazing_4"].label == ["rolled-in_scale"]
    # Boxes are clipped to the real image size (210 -> 200).
    assert json.loads(rows["crazing_4"].meta["boxes"]) == [[0, 0, 200, 200, "rolled-in_scale"]]
    multi = run_import("neu-det", src, tmp_path / "out2", multi_label=True)
    rows2 = {r.group: r for r in read_manifest(multi.manifest_path)}
    assert rows2["patches_2"].label == ["patches", "inclusion"]


def test_neu_det_without_annotations_folder(tmp_path):
    _gray(tmp_path / "IMAGES" / "a_1.jpg")
    with pytest.raises(DataError, match="no ANNOTATIONS/ folder"):
        run_import("neu-det", tmp_path, tmp_path / "out")


@pytest.mark.shared
def test_neu_det_real_data(neu_det_dir, tmp_path):
    result = run_import("neu-det", neu_det_dir, tmp_path / "neu")
    assert result.n_rows == 1800 and result.skipped == {}
    m = read_manifest(result.manifest_path)
    assert len(m) == 1800 and m.n_skipped == 0
    assert Counter(r.label[0] for r in m) == dict.fromkeys(
        ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"], 300
    )
    assert len({r.group for r in m}) == 1800 and not check_leakage(m.rows)
    assert {r.split for r in m} == {"train", "val", "test"}
    for row in m.rows[::97]:
        path = _resolves_to(result.manifest_path, row.image)
        assert path.is_file() and path.parent == (neu_det_dir / "IMAGES").resolve()
        assert row.image.startswith("..")  # relative, not copied
        boxes = json.loads(row.meta["boxes"])
        assert boxes and all(0 <= b[0] < b[2] <= 200 and 0 <= b[1] < b[3] <= 200 for b in boxes)
        assert row.text.endswith("a steel surface")


# ----------------------------------------------------------------------------------------------
# COVID CXR (small hand-made table, then the real data)

_HEADER = (
    "patientid,offset,sex,age,finding,view,modality,folder,filename,doi,license,clinical_notes\n"
)


def _covid_tree(root: Path) -> None:
    for name in ("a.png", "b.jpg", "c.png", "shared.png"):
        _gray(root / "images" / name)
    lines = [
        # cp1252 curly quotes: the file is not valid UTF-8
        '1,0,M,65,"COVID-19, ARDS",PA,X-ray,images,a.png,10.1/x,CC BY,"Fever and a \u201cwet\u201d\n  cough"\n',
        "2,,F,,Streptococcus,AP Supine,X-ray,images,b.jpg,,,\n",
        "3,0,M,40,COVID-19,Axial,CT,images,c.png,,,CT row\n",
        "4,0,F,30,No Finding,PA,X-ray,images,gone.png,,,missing file\n",
        "5,0,F,30,Pneumonia,PA,X-ray,images,shared.png,,,same image\n",
        "6,0,F,30,Pneumonia,L,X-ray,images,shared.png,,,same image again\n",
    ]
    (root / "metadata.csv").write_bytes((_HEADER + "".join(lines)).encode("cp1252"))


def test_covid_cxr_rows_texts_labels_groups(tmp_path):
    src = tmp_path / "cxr"
    _covid_tree(src)
    result = run_import("covid-cxr", src, tmp_path / "out")
    assert result.n_rows == 4
    assert result.skipped == {"missing_image": 1, "not_xray": 1}
    m = read_manifest(result.manifest_path)
    rows = {Path(r.image).name: r for r in m}
    a = rows["a.png"]
    assert a.text == "Fever and a \u201cwet\u201d cough"  # repaired and whitespace-cleaned
    assert a.label == ["COVID-19", "ARDS"] and a.group == "1"
    assert a.meta["text_source"] == "clinical_notes" and a.meta["view"] == "PA"
    assert a.meta["doi"] == "10.1/x" and a.meta["sex"] == "M" and a.meta["age"] == "65"
    b = rows["b.jpg"]
    assert b.text == "Chest x-ray, AP supine view. Finding: Streptococcus."
    assert b.meta["text_source"] == "finding_template"
    # Patients 5 and 6 list the same image file: one group, so they share a split.
    shared = [r for r in m if r.image.endswith("shared.png")]
    assert {r.group for r in shared} == {"5+6"} and len({r.split for r in shared}) == 1
    assert any("5+6" in n for n in result.notes)


def test_covid_cxr_missing_column_lists_found_and_expected(tmp_path):
    (tmp_path / "metadata.csv").write_text("patientid,filename\n1,a.png\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) finding.*Found: patientid, filename"):
        run_import("covid-cxr", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="metadata.csv not found"):
        run_import("covid-cxr", tmp_path / "out", tmp_path / "out2")


def test_decode_mixed_and_finding_sentence():
    text, repaired = decode_mixed("caf\u00e9 ".encode() + b"\x93q\x94 \x81")
    assert text == "caf\u00e9 \u201cq\u201d \x81" and repaired == 3
    assert finding_sentence("L", ["SARS"]) == "Chest x-ray, lateral view. Finding: SARS."
    assert finding_sentence("", ["A", "B"]) == "Chest x-ray. Findings: A, B."


@pytest.mark.shared
def test_covid_cxr_real_data(covid_cxr_dir, tmp_path):
    result = run_import("covid-cxr", covid_cxr_dir, tmp_path / "cxr")
    assert result.n_rows == 575 and result.skipped == {"missing_image": 14}
    m = read_manifest(result.manifest_path)
    assert len(m) == 575 and m.n_skipped == 0 and not check_leakage(m.rows)
    assert all(r.meta["modality"] == "X-ray" for r in m)
    labels = Counter(lab for r in m for lab in r.label)
    assert labels["COVID-19"] > 400 and labels["No Finding"] > 0
    assert any(r.label == ["COVID-19", "ARDS"] for r in m)
    sources = Counter(r.meta["text_source"] for r in m)
    assert sources["clinical_notes"] > 400 and sources["finding_template"] > 50
    assert all(r.text.strip() and "  " not in r.text for r in m)
    assert len({r.group for r in m}) > 250  # patients, not images
    for row in m.rows[::53]:
        assert _resolves_to(result.manifest_path, row.image).is_file()


def test_folder_templates_file_with_a_class_twice(tmp_path):
    src = tmp_path / "src"
    _class_tree(src)
    twice = tmp_path / "twice.yaml"
    twice.write_text('ok: "a {class} part"\nrust_spot: "rust"\nok: "a fine {class} part"\n')
    with pytest.raises(DataError) as info:
        run_import("folder", src, tmp_path / "o", templates=str(twice))
    msg = str(info.value)
    assert str(twice) in msg and "key 'ok' appears twice (lines 1 and 3)" in msg
