"""The synthetic generator's geometry options: image size, aspect mixes, defect sizes in pixels.

The point of these options is to reproduce the geometry problems of real domain data (large
non-square images, small findings near the ends), so the tests check exactly that: masks and boxes
stay exact, sizes are what was asked, the texts' position words are true on non-square images,
and a centre crop really cuts defects off while letterboxing keeps them all.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from domainclip.datasets.describe import position_phrase
from domainclip.datasets.geometry import plan_fit
from domainclip.datasets.importers import run_import
from domainclip.datasets.importers.synthetic import (
    DEFECT_CLASSES,
    Canvas,
    parse_aspects,
    parse_defect_size,
    render_sample,
)
from domainclip.datasets.manifest import read_manifest
from domainclip.errors import DataError

STRIP = Canvas(1024, 384, (8, 24))


def _check_exact(s, cls: str) -> None:
    """Mask = exactly the changed pixels; boxes tight; every mask pixel inside a box."""
    inside = s.mask == 255
    assert set(np.unique(s.mask)) <= {0, 255}
    assert np.array_equal(s.image[~inside], s.background[~inside])
    assert np.all(s.image[inside] != s.background[inside])
    assert inside.any() and s.boxes, cls
    covered = np.zeros_like(inside)
    for x0, y0, x1, y1, name in s.boxes:
        assert name == cls
        assert 0 <= x0 < x1 <= s.image.shape[1] and 0 <= y0 < y1 <= s.image.shape[0]
        covered[y0:y1, x0:x1] = True
        sub = inside[y0:y1, x0:x1]
        assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
    assert not (inside & ~covered).any(), "mask pixels outside every box"
    if cls in ("pit", "patch"):
        assert ndimage.label(inside)[1] == len(s.boxes)


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
@pytest.mark.parametrize(
    "canvas", [STRIP, Canvas(256, 128), Canvas(96, 240), Canvas(160, 160, (6, 40))], ids=str
)
def test_masks_and_boxes_stay_exact_on_any_canvas(cls, canvas):
    for i in range(4):
        s = render_sample(cls, canvas, np.random.default_rng([21, i]))
        assert s.image.shape == s.mask.shape == (canvas.height, canvas.width)
        _check_exact(s, cls)


def test_defect_sizes_in_pixels_are_within_range_whatever_the_image_size():
    for canvas in (STRIP, Canvas(400, 400, (8, 24)), Canvas(64, 40, (8, 24))):
        sides = {cls: [] for cls in DEFECT_CLASSES}
        for cls in DEFECT_CLASSES:
            for i in range(8):
                s = render_sample(cls, canvas, np.random.default_rng([8, i]))
                sides[cls] += [max(x1 - x0, y1 - y0) for x0, y0, x1, y1, _ in s.boxes]
        for cls, got in sides.items():
            assert got and min(got) >= 8 and max(got) <= 24, (canvas, cls, got)
        # The whole range is used, not just one size.
        pooled = sorted(v for got in sides.values() for v in got)
        assert pooled[0] <= 10 and pooled[-1] >= 22, (canvas, pooled)


def test_width_height_and_aspect_mix(tmp_path):
    fixed = run_import("synthetic", None, tmp_path / "fixed", n=10, width=1024, height=384)
    m = read_manifest(fixed.manifest_path)
    for row in m:
        assert Image.open(m.image_path(row)).size == (1024, 384)
        assert np.array(Image.open(m.root / row.meta["mask"])).shape == (384, 1024)
        assert (row.meta["width"], row.meta["height"]) == ("1024", "384")

    mixed = run_import("synthetic", None, tmp_path / "mixed", n=30, size=96, aspects="1,8:3,1:2")
    m = read_manifest(mixed.manifest_path)
    shapes = Counter()
    for row in m:
        size = Image.open(m.image_path(row)).size
        assert size == (int(row.meta["width"]), int(row.meta["height"]))
        shapes[row.label[0], size] += 1
    # Every class gets the same mix (96x96, 256x96, 96x192: two of each), so shape never
    # predicts the class.
    for cls in (*DEFECT_CLASSES, "clean"):
        assert {s: shapes[cls, s] for s in [(96, 96), (256, 96), (96, 192)]} == {
            (96, 96): 2,
            (256, 96): 2,
            (96, 192): 2,
        }, (cls, shapes)
    weighted = run_import("synthetic", None, tmp_path / "w", n=40, aspects=[1, 1, 1, 2])
    sizes = Counter(r.meta["width"] for r in read_manifest(weighted.manifest_path))
    assert sizes == {"128": 30, "256": 10}


def test_position_words_match_box_centres_on_non_square_images(tmp_path):
    result = run_import(
        "synthetic", None, tmp_path, n=50, width=1024, height=384, defect_size="8-24", seed=2
    )
    checked = square_would_differ = 0
    for row in read_manifest(result.manifest_path):
        boxes = json.loads(row.meta["boxes"])
        if len(boxes) != 1:
            continue
        x0, y0, x1, y1, _ = boxes[0]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        place = position_phrase(cx, cy, 1024, 384)
        assert f" {place} of a metal surface" in row.text, (row.text, boxes)
        checked += 1
        # The same box named as if the image were 384 px square: the words would be false.
        square_would_differ += position_phrase(cx, cy, 384, 384) != place
    assert checked >= 8 and square_would_differ >= 3, (checked, square_would_differ)


def test_same_seed_same_bytes_with_geometry_options(tmp_path):
    kw = dict(n=10, size=64, aspects="1,8:3", defect_size="6-20")
    a = run_import("synthetic", None, tmp_path / "a", seed=5, **kw)
    b = run_import("synthetic", None, tmp_path / "b", seed=5, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 21
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a.manifest_path.read_text() == b.manifest_path.read_text()
    run_import("synthetic", None, tmp_path / "c", seed=6, **kw)
    assert all(
        (tmp_path / "a" / "images" / p.name).read_bytes() != p.read_bytes()
        for p in sorted((tmp_path / "c" / "images").iterdir())
    )


def test_square_options_are_the_default_generator(tmp_path):
    # width == height == size and aspects=[1] draw exactly what size alone draws (the default
    # the demo's numbers rest on), and an int canvas is the square canvas.
    base = run_import("synthetic", None, tmp_path / "base", n=6, size=48, seed=1)
    same = run_import("synthetic", None, tmp_path / "wh", n=6, width=48, height=48, seed=1)
    one = run_import("synthetic", None, tmp_path / "one", n=6, size=48, aspects="1", seed=1)
    for other in (same, one):
        for p in sorted((tmp_path / "base" / "images").iterdir()):
            assert p.read_bytes() == (other.manifest_path.parent / "images" / p.name).read_bytes()
    assert base.manifest_path.read_text().count("\n") == 7
    for cls in DEFECT_CLASSES:
        a = render_sample(cls, 64, np.random.default_rng([4, 0]))
        b = render_sample(cls, Canvas(64, 64), np.random.default_rng([4, 0]))
        assert np.array_equal(a.image, b.image) and a.boxes == b.boxes


def test_centre_crop_cuts_defects_at_the_ends_of_a_strip_letterbox_keeps_all():
    crop = plan_fit(1024, 384, 224, "crop")
    letterbox = plan_fit(1024, 384, 224, "letterbox")
    n = partly = fully = 0
    for i, cls in enumerate(DEFECT_CLASSES * 8):
        for x0, y0, x1, y1, _ in render_sample(cls, STRIP, np.random.default_rng([9, i])).boxes:
            visible = crop.box_visibility((x0, y0, x1, y1))[0]
            partly += visible < 1.0
            fully += visible == 0.0
            assert letterbox.box_visibility((x0, y0, x1, y1))[0] == pytest.approx(1.0)
            n += 1
    # The crop keeps the middle 384 of 1024 columns: defects placed uniformly lose ~60%.
    print(f"crop at 224 cuts {partly}/{n} defects (partly), {fully}/{n} entirely")
    assert n > 50 and fully > 0.3 * n and partly > fully


def test_geometry_option_errors(tmp_path):
    cases = [
        (dict(width=1024), "width and height together"),
        (dict(width=1024, height=384, size=128), "leave out size and aspects"),
        (dict(width=1024, height=384, aspects="1,2"), "leave out size and aspects"),
        (dict(width=1024, height=16), "at least 32"),
        (dict(aspects="1,wide"), "'wide' is not a width/height ratio"),
        (dict(aspects="1,40"), "between 1/16 and 16"),
        (dict(defect_size="24-8"), "LO <= HI"),
        (dict(defect_size="2-6"), "at least 4"),
        (dict(size=64, defect_size="8-80"), "at most 62"),
        (dict(size=4096, aspects="1,4"), "the limit is 8192"),
    ]
    for kw, message in cases:
        with pytest.raises(DataError, match=message):
            run_import("synthetic", None, tmp_path, n=3, **kw)
    assert parse_aspects("1, 8:3 ,0.5") == (1.0, 8 / 3, 0.5)
    assert parse_defect_size("8-24") == parse_defect_size((8, 24)) == (8, 24)
    assert parse_defect_size(16) == (16, 16)
