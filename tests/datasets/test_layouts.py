"""Layouts people already have: MVTec-AD folders, folders with masks beside the images, label
maps, include/exclude, `data split`, and validate's mask checks. Every layout is built here from
real files (PNG/JPEG images and binary masks)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainclip.cli import main
from domainclip.datasets.describe import describe_mask, mask_boxes
from domainclip.datasets.importers import run_import
from domainclip.datasets.manifest import ManifestRow, read_manifest, write_manifest
from domainclip.datasets.maskfiles import looks_like_mask, pair_masks
from domainclip.datasets.splits import check_leakage, split_manifest
from domainclip.datasets.validate import validate_manifest
from domainclip.errors import DataError

W, H = 60, 45


def _photo(path: Path, size: tuple[int, int] = (W, H), seed: int = 0) -> Path:
    """A noisy RGB photo (many grey values: never mask-like)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (W, H)) -> Path:
    """A binary L mask, 255 inside box = (x0, y0, x1, y1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)
    return path


# Masks of the test defects: lower right, upper left, centre, top centre (a 60x45 image).
_BOXES = [(46, 34, 54, 42), (2, 2, 10, 10), (26, 18, 34, 26), (25, 1, 35, 8)]
_WHERE = ["in the lower right", "in the upper left", "in the centre", "at the top centre"]


def _mvtec(root: Path, category: str = "hazelnut") -> Path:
    cat = root / category
    for i in range(6):
        _photo(cat / "train" / "good" / f"{i:03d}.png", seed=i)
    for i in range(3):
        _photo(cat / "test" / "good" / f"{i:03d}.png", seed=10 + i)
    for d, defect in enumerate(("crack", "broken_large")):
        for i, box in enumerate(_BOXES):
            _photo(cat / "test" / defect / f"{i:03d}.png", seed=20 + 10 * d + i)
            _mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png", box)
    return cat


# ----------------------------------------------------------------------------------------------
# describer on masks


def test_describe_mask_counts_regions_and_drops_specks():
    m = np.zeros((45, 60), dtype=bool)
    m[2:10, 2:10] = True  # upper left
    m[2:10, 48:58] = True  # upper right
    m[40, 30] = True  # one-pixel speck: not a finding
    assert mask_boxes(m) == [(48, 2, 58, 10), (2, 2, 10, 10)]
    assert describe_mask("pit", m, surface="metal plate") == "two small pits along the top of a metal plate"
    assert describe_mask("pit", np.zeros((5, 5), bool)) is None


# ----------------------------------------------------------------------------------------------
# mvtec


def test_mvtec_import_rows_texts_masks_and_pooled_splits(tmp_path):
    cat = _mvtec(tmp_path / "src")
    result = run_import("mvtec", cat, tmp_path / "out", val_frac=0.2, test_frac=0.2)
    m = read_manifest(result.manifest_path)
    assert len(m) == result.n_rows == 6 + 3 + 8  # masks are never rows
    assert Counter(r.label[0] for r in m) == {"good": 9, "crack": 4, "broken_large": 4}
    for r in m:
        assert not r.image.endswith("_mask.png")
        if r.label[0] == "good":
            assert r.text == "a defect-free hazelnut" and not r.meta.get("mask")
            continue
        i = int(Path(r.image).stem)
        noun = "crack" if r.label[0] == "crack" else "break"  # broken_large: the mask gives the size
        assert r.text == f"a small {noun} {_WHERE[i]} of a hazelnut", r.text
        mask = (result.manifest_path.parent / r.meta["mask"]).resolve()
        assert mask == (cat / "ground_truth" / r.label[0] / f"{i:03d}_mask.png").resolve()
        assert r.meta["text_source"] == "describe_mask" and r.meta["source_split"] == "test"
    assert not check_leakage(m.rows)
    # pooled and stratified: defects reach the train split, and every split has good images
    by_split = {s: Counter(r.label[0] for r in m if r.split == s) for s in ("train", "val", "test")}
    assert by_split["train"]["crack"] and by_split["train"]["broken_large"]
    assert all(c["good"] for c in by_split.values())


def test_mvtec_keep_splits_follows_the_published_protocol(tmp_path):
    cat = _mvtec(tmp_path / "src")
    result = run_import("mvtec", cat, tmp_path / "out", splits="keep", val_frac=0.3, test_frac=0.3)
    m = read_manifest(result.manifest_path)
    assert {r.split for r in m if r.meta["source_split"] == "train"} == {"train"}
    from_test = Counter(r.split for r in m if r.meta["source_split"] == "test")
    assert set(from_test) == {"val", "test"} and sum(from_test.values()) == 11
    assert abs(from_test["val"] - from_test["test"]) <= 1


def test_mvtec_label_map_and_several_categories(tmp_path):
    _mvtec(tmp_path / "src", "hazelnut")
    _mvtec(tmp_path / "src", "metal_nut")
    (tmp_path / "src" / "license.txt").write_text("CC BY-NC-SA")
    lm = tmp_path / "labels.yaml"
    lm.write_text("broken_large: {label: broken, words: fracture}\ngood: ok\n")
    result = run_import("mvtec", tmp_path / "src", tmp_path / "out", label_map=str(lm))
    m = read_manifest(result.manifest_path)
    assert len(m) == 34
    assert Counter(r.label[0] for r in m) == {"ok": 18, "crack": 8, "broken": 8}
    assert Counter(r.meta["category"] for r in m) == {"hazelnut": 17, "metal_nut": 17}
    texts = {r.text for r in m if r.label[0] == "broken" and r.image.endswith("000.png")}
    assert texts == {
        "a small fracture in the lower right of a hazelnut",
        "a small fracture in the lower right of a metal nut",
    }


def test_mvtec_mask_without_image_and_missing_masks(tmp_path):
    cat = _mvtec(tmp_path / "src")
    (cat / "test" / "crack" / "002.png").unlink()
    with pytest.raises(DataError, match=r"1 mask\(s\) in ground_truth/ belong to no test image.*crack/002_mask.png"):
        run_import("mvtec", cat, tmp_path / "out")
    (cat / "ground_truth" / "crack" / "002_mask.png").unlink()
    (cat / "ground_truth" / "crack" / "003_mask.png").unlink()
    result = run_import("mvtec", cat, tmp_path / "out")
    assert result.warnings == {"no_mask": 1}
    m = read_manifest(result.manifest_path)
    row = next(r for r in m if r.image.endswith("crack/003.png"))
    assert row.text == "a hazelnut with a crack" and row.meta["text_source"] == "template"


# ----------------------------------------------------------------------------------------------
# folder: masks, label map, include / exclude


def _magnetic_tile(src: Path) -> None:
    """Magnetic-tile layout: Class/Imgs/x.jpg with the mask x.png beside it."""
    for cls, n in (("MT_Blowhole", 4), ("MT_Free", 4)):
        for i in range(n):
            _photo(src / cls / "Imgs" / f"exp{i}.jpg", seed=i)
            _mask(src / cls / "Imgs" / f"exp{i}.png", _BOXES[i] if cls != "MT_Free" else (0, 0, 0, 0))


def test_folder_pairs_same_stem_masks_and_applies_the_label_map(tmp_path):
    src = tmp_path / "src"
    _magnetic_tile(src)
    lm = tmp_path / "labels.yaml"
    lm.write_text(
        "MT_Blowhole: blowhole\n"
        "MT_Free: {label: good, words: defect-free magnetic tile, template: 'a photo of a {class}'}\n"
    )
    result = run_import("folder", src, tmp_path / "out", label_map=str(lm))
    m = read_manifest(result.manifest_path)
    assert len(m) == 8  # 16 files, 8 of them masks
    assert Counter(r.label[0] for r in m) == {"blowhole": 4, "good": 4}
    assert {r.label[0]: r.text for r in m} == {
        "blowhole": "a photo of blowhole",
        "good": "a photo of a defect-free magnetic tile",
    }
    for r in m:
        assert r.image.endswith(".jpg")
        assert (result.manifest_path.parent / r.meta["mask"]).resolve() == (
            result.manifest_path.parent / r.image
        ).resolve().with_suffix(".png")
    assert "8 of 8 images have a paired mask" in result.summary()


def test_folder_sibling_mask_folders_include_exclude(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        _photo(src / "scratch" / "Imgs" / f"s{i}.png", seed=i)
        _mask(src / "scratch" / "masks" / f"s{i}.png", _BOXES[i])
        _photo(src / "pit" / f"p{i}.jpg", seed=5 + i)
        _mask(src / "pit" / "GT" / f"p{i}_mask.png", _BOXES[i])
    _photo(src / "pit" / "thumbs" / "p0.jpg", seed=9)
    result = run_import("folder", src, tmp_path / "out", exclude=["*/thumbs/*"])
    m = read_manifest(result.manifest_path)
    assert len(m) == 6 and result.skipped == {"excluded": 1}
    for r in m:
        mask = Path(r.meta["mask"])
        assert mask.parent.name in ("masks", "GT") and mask.name.startswith(Path(r.image).stem)
    only = run_import("folder", src, tmp_path / "out2", include=["scratch/*"])
    assert Counter(r.label[0] for r in read_manifest(only.manifest_path)) == {"scratch": 3}


def test_folder_same_stem_photo_is_not_a_mask(tmp_path):
    src = tmp_path / "src"
    _photo(src / "a" / "x.jpg", seed=1)
    _photo(src / "a" / "x.png", seed=2)  # a photo, not a mask: both are images
    result = run_import("folder", src, tmp_path / "out")
    assert result.n_rows == 2 and result.warnings == {"same_stem_image": 1}
    assert not looks_like_mask(src / "a" / "x.png")


def test_pair_masks_reports_orphans(tmp_path):
    a = _photo(tmp_path / "c" / "Imgs" / "a.jpg")
    am = _mask(tmp_path / "c" / "Imgs" / "a_mask.png", (1, 1, 5, 5))
    orphan = _mask(tmp_path / "c" / "GT" / "b.png", (1, 1, 5, 5))
    p = pair_masks([a, am, orphan], tmp_path)
    assert p.images == [(a, am)] and p.orphans == [orphan]


# ----------------------------------------------------------------------------------------------
# data split


def _unsplit(tmp_path: Path, n_groups: int = 20) -> Path:
    rows = []
    for g in range(n_groups):
        for k in range(2):
            img = _photo(tmp_path / "img" / f"g{g}_{k}.png", (8, 8), seed=g)
            rows.append(
                ManifestRow(
                    image=str(img),
                    text=f"image {g} {k}",
                    label=["defect" if g % 4 == 0 else "good"],
                    group=f"lot{g}",
                    meta={"patient": f"p{g // 2}"},
                )
            )
    return write_manifest(rows, tmp_path / "manifest.csv")


def test_data_split_command_refuses_to_reshuffle_without_force(tmp_path, capsys):
    path = _unsplit(tmp_path)
    assert main(["data", "split", str(path), "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "leakage check: passed" in out and "train: 24 rows, 12 groups" in out
    m = read_manifest(path)
    assert Counter(r.split for r in m) == {"train": 24, "val": 8, "test": 8}
    assert not check_leakage(m.rows)
    for s in ("train", "val", "test"):  # stratified: a fifth of the groups are defects in each
        assert Counter(r.label[0] for r in m if r.split == s)["defect"] >= 2
    before = path.read_bytes()
    assert main(["data", "split", str(path)]) == 2
    assert "already split" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["data", "split", str(path), "--force", "--seed", "3"]) == 0
    assert path.read_bytes() != before
    assert not check_leakage(read_manifest(path).rows)


def test_split_keeps_existing_assignments_and_groups_by_a_column(tmp_path):
    path = _unsplit(tmp_path)
    rows = read_manifest(path).rows
    rows[0].split = rows[1].split = "test"  # lot0 pre-assigned
    write_manifest(rows, path)
    report = split_manifest(path, by="patient", val_frac=0.2, test_frac=0.2)
    assert report.kept == 2 and report.assigned == 38
    m = read_manifest(path)
    assert {r.split for r in m if r.meta["patient"] == "p0"} == {"test"}
    for patient in {r.meta["patient"] for r in m}:
        assert len({r.split for r in m if r.meta["patient"] == patient}) == 1
    with pytest.raises(DataError, match="--by 'ward' is not a column"):
        split_manifest(path, by="ward", force=True)


# ----------------------------------------------------------------------------------------------
# validate: masks listed as images, mask sizes


def test_validate_reports_masks_as_images_and_mask_sizes_by_row(tmp_path):
    img = _photo(tmp_path / "a.jpg")
    mask = _mask(tmp_path / "a_mask.png", (2, 2, 9, 9))
    small = _mask(tmp_path / "b_mask.png", (2, 2, 9, 9), size=(30, 20))
    lone = _mask(tmp_path / "masks" / "c.png", (2, 2, 9, 9))
    rows = [
        {"image": img.name, "text": "a pit", "split": "train", "mask": mask.name},
        {"image": mask.name, "text": "a pit", "split": "train"},
        {"image": _photo(tmp_path / "b.jpg").name, "text": "a pit", "split": "val", "mask": small.name},
        {"image": "masks/c.png", "text": "a pit", "split": "test"},
    ]
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text", "split", "mask"])
        w.writeheader()
        w.writerows(rows)
    assert lone.is_file()
    report = validate_manifest(path)
    assert not report.ok
    assert report.warnings["image_is_mask"] == [2]
    assert "row 2 (line 3): image a_mask.png is the mask of row 1 (line 2)" in report.errors[0]
    assert report.warnings["mask_size"] == [3]
    assert "30x20 but its image is 60x45" in report.examples["mask_size"][0]
    assert report.warnings["image_looks_like_mask"] == [2, 4]


def test_finetune_on_an_unsplit_manifest_names_data_split(tmp_path):
    from domainclip.finetune.config import DataConfig
    from domainclip.finetune.data import load_splits

    path = _unsplit(tmp_path)
    with pytest.raises(DataError, match=rf"domainclip data split {path}"):
        load_splits(DataConfig(manifest=str(path)), seed=0)


def test_data_split_carves_a_calib_split_out_of_train_only(tmp_path, capsys):
    path = _unsplit(tmp_path)
    assert main(["data", "split", str(path), "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    before = {r.image: r.split for r in read_manifest(path)}
    capsys.readouterr()
    assert main(["data", "split", str(path), "--calib-frac", "0.1"]) == 0
    assert "calib: 4 rows, 2 groups" in capsys.readouterr().out
    after = read_manifest(path)
    changed = {(before[r.image], r.split) for r in after if before[r.image] != r.split}
    assert changed == {("train", "calib")} and not check_leakage(after.rows)
    assert main(["data", "split", str(path), "--calib-frac", "0.1"]) == 2  # already has one
    assert "already has a calib split" in capsys.readouterr().err


def test_import_with_a_calib_fraction_and_mvtec_keep_refuses_it(tmp_path):
    result = run_import("synthetic", None, tmp_path / "syn", n=40, size=48, calib_frac=0.2)
    assert Counter(r.split for r in read_manifest(result.manifest_path))["calib"] == 8
    cat = _mvtec(tmp_path / "src")
    with pytest.raises(DataError, match="--calib-frac needs --splits pool"):
        run_import("mvtec", cat, tmp_path / "out", splits="keep", calib_frac=0.2)
    with pytest.raises(DataError, match="must be below 1"):
        run_import("synthetic", None, tmp_path / "syn2", n=40, size=48, val_frac=0.4, test_frac=0.3, calib_frac=0.3)
