"""The geometry report: which annotated findings a fit policy cuts off or shrinks, per class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.geometry import plan_fit
from domainclip.datasets.geometry_report import (
    GeometryReport,
    format_comparison,
    geometry_report,
    geometry_reports,
)
from domainclip.datasets.imageio import ImageReadError, load_mask, read_image_size
from domainclip.datasets.manifest import ManifestRow, write_manifest
from domainclip.errors import ConfigError, ResultFileError
from tests.datasets.helpers import make_dicom, save_rgb

W, H = 1024, 256  # a strip: under crop at 224 only x in [384, 640) reaches the input
LEFT, RIGHT = [10, 100, 60, 150], [960, 100, 1010, 150]  # 50 px boxes at both ends
HALF = [360, 100, 400, 150]  # straddles the crop edge at x = 384: 16 of 40 px inside
SMALL = [500, 100, 516, 116]  # 16 px, centred: 16 * 224 / 1024 = 3.5 px letterboxed


def _boxes(*boxes) -> str:
    return json.dumps([[*b, c] for b, c in boxes])


@pytest.fixture
def strip_manifest(tmp_path):
    save_rgb(tmp_path / "strip.png", (W, H))
    save_rgb(tmp_path / "square.png", (300, 300))
    mask = np.zeros((H, W), np.uint8)
    mask[100:130, 10:40] = 255  # cut by crop
    mask[100:130, 500:530] = 255  # always visible, 6.6 px letterboxed
    mask[200:202, 600:602] = 1  # non-zero counts: a 2 px speck (0.4 px letterboxed)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rows = [
        ManifestRow(
            "strip.png",
            "scratches at both ends",
            ["scratch"],
            "g1",
            "test",
            {"boxes": _boxes((LEFT, "scratch"), (RIGHT, "scratch"), (HALF, "pit"), (SMALL, "pit"))},
        ),
        ManifestRow("strip.png", "a crack", ["crack"], "g2", "test", {"mask": "mask.png"}),
        ManifestRow(
            "square.png",
            "a pit",
            ["pit"],
            "g3",
            "train",
            {"boxes": _boxes(([100, 100, 150, 150], "pit"))},
        ),
        ManifestRow("strip.png", "mask gone", ["crack"], "g4", "test", {"mask": "gone.png"}),
        ManifestRow("broken.png", "not an image", ["crack"], "g5", "test"),
    ]
    (tmp_path / "broken.png").write_bytes(b"<html>not found</html>")
    return write_manifest(rows, tmp_path / "m.csv")


def test_crop_cuts_the_ends_of_a_strip(strip_manifest):
    r = geometry_report(strip_manifest, 224, "crop")
    t = r.total
    # 4 readable rows (3 strips, 1 square); 4 boxes + 3 mask components on strips, 1 box on the square
    assert (t.n_images, t.n_non_square, t.n_findings) == (4, 3, 8)
    # LEFT, RIGHT and the left mask blob are outside; HALF is 40% inside; the speck is 1.75 px
    assert (t.n_cut, t.n_mostly_cut, t.n_small) == (3, 1, 1)
    assert (r.classes["scratch"].n_cut, r.classes["scratch"].n_findings) == (2, 2)
    assert (r.classes["crack"].n_cut, r.classes["crack"].n_findings) == (1, 3)
    pit = r.classes["pit"]
    assert (pit.n_images, pit.n_findings, pit.n_mostly_cut) == (1, 3, 1)
    worst = r.examples[0]
    assert worst.outcome == "cut" and worst.visible == 0.0 and worst.row == 1
    assert worst.image == "strip.png" and worst.box == [10.0, 100.0, 60.0, 150.0]
    half = next(e for e in r.examples if e.outcome == "mostly_cut")
    assert half.visible == pytest.approx(16 / 40, abs=0.01) and half.label == "pit"
    assert r.advice().startswith(
        "3 of 8 annotated findings are outside the model's input and 1 more is mostly cut off "
        "under crop: use --fit letterbox."
    )


def test_letterbox_keeps_them_but_shrinks_small_ones(strip_manifest):
    r = geometry_report(strip_manifest, 224, "letterbox")
    t = r.total
    assert (t.n_cut, t.n_mostly_cut) == (0, 0)
    # SMALL (3.5 px) and the 2 px speck (0.4 px); a 30 px blob stays 6.6 px
    assert t.n_small == 2
    small = {(e.label, e.source): e for e in r.examples}
    assert small[("pit", "box")].side == pytest.approx(16 * 224 / 1024, abs=0.01)
    assert small[("crack", "mask")].box == [600.0, 200.0, 602.0, 202.0]
    assert "2 of 8 annotated findings are smaller than 4 px in the 224 px input" in r.advice()
    # a higher resolution keeps them: at 448 px SMALL is 7 px, the speck still 0.9 px
    assert geometry_report(strip_manifest, 448, "letterbox").total.n_small == 1


def test_unreadable_image_and_missing_mask_are_counted_and_named(strip_manifest):
    r = geometry_report(strip_manifest, 224, "crop")
    assert r.n_problems == {"mask_missing": 1, "image_not_image": 1}
    named = {(p.row, p.file, p.kind) for p in r.problems}
    assert named == {(4, "gone.png", "mask_missing"), (5, "broken.png", "image_not_image")}
    assert "not measured: 2" in r.format() and "row 5 broken.png" in r.format()


def test_mask_visibility_counts_pixels_not_the_bounding_box(tmp_path):
    """An L-shaped mask whose box straddles the crop edge but whose pixels are all outside."""
    save_rgb(tmp_path / "s.png", (W, H))
    mask = np.zeros((H, W), np.uint8)
    mask[50:200, 300:310] = 255  # vertical bar, x < 384: cut
    mask[190:200, 300:420] = 255  # foot reaching x = 420: 36 of its columns inside
    Image.fromarray(mask).save(tmp_path / "m.png")
    path = write_manifest(
        [ManifestRow("s.png", "t", ["crack"], meta={"mask": "m.png"})], tmp_path / "m.csv"
    )
    r = geometry_report(path, 224, "crop")
    (e,) = r.examples
    fit = plan_fit(W, H, 224, "crop")
    visible = np.isfinite(fit.to_original(np.zeros((224, 224))))
    expected = (mask > 0)[visible].sum() / (mask > 0).sum()
    assert e.visible == pytest.approx(expected, abs=1e-4)
    assert e.visible < fit.box_visibility((300, 50, 420, 200))[0]  # the box would claim more
    assert e.outcome == "mostly_cut"


def test_split_filter_policies_in_one_pass_and_round_trip(strip_manifest):
    reports = geometry_reports(strip_manifest, 224, ["crop", "letterbox"], split="train")
    assert [r.policy for r in reports] == ["crop", "letterbox"]
    assert reports[0].n_rows == 1 and reports[0].total.n_non_square == 0
    assert reports[0].total.n_findings == 1 and reports[0].total.n_affected == 0
    assert reports[0].advice() is None
    both = geometry_reports(strip_manifest, 224, ["crop", "letterbox"])
    assert both[1] == geometry_report(strip_manifest, 224, "letterbox")
    text = format_comparison(both)
    assert "crop      3 cut off, 1 mostly cut" in text and "letterbox 0 cut off" in text
    data = json.loads(json.dumps(both[0].to_dict()))
    assert GeometryReport.from_dict(data) == both[0]
    del data["total"]["n_cut"]
    with pytest.raises(ResultFileError, match=r"total\.n_cut"):
        GeometryReport.from_dict(data, "x.json")


def test_bad_arguments_are_config_errors(strip_manifest):
    with pytest.raises(ConfigError, match="unknown fit policy 'tile'"):
        geometry_report(strip_manifest, 224, "tile")
    with pytest.raises(ConfigError, match="unknown split"):
        geometry_report(strip_manifest, 224, "crop", split="holdout")
    with pytest.raises(ConfigError, match="cut_fraction"):
        geometry_report(strip_manifest, 224, "crop", cut_fraction=0)


def test_malformed_and_outside_boxes_are_problems(tmp_path):
    save_rgb(tmp_path / "a.png", (100, 50))
    rows = [
        ManifestRow("a.png", "t", ["x"], meta={"boxes": "[[1, 2, 3]]"}),
        ManifestRow(
            "a.png",
            "t",
            ["x"],
            meta={"boxes": _boxes(([200, 10, 220, 20], "x"), ([10, 10, 20, 20], "x"))},
        ),
    ]
    r = geometry_report(write_manifest(rows, tmp_path / "m.csv"), 64, "letterbox")
    assert r.n_problems == {"bad_boxes": 1, "box_outside_image": 1}
    assert r.total.n_findings == 1 and r.total.n_images == 2


def test_image_size_from_the_header(tmp_path):
    save_rgb(tmp_path / "a.jpg", (40, 30))
    assert read_image_size(tmp_path / "a.jpg") == (40, 30)
    # EXIF orientation 6 (a quarter turn): load_image turns it, so the size is swapped
    img = Image.new("RGB", (40, 30))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    from domainclip.datasets.imageio import load_image

    assert read_image_size(tmp_path / "r.jpg") == load_image(tmp_path / "r.jpg").size == (30, 40)
    dcm = make_dicom(tmp_path / "x.dcm", np.zeros((20, 50), np.uint16))
    assert read_image_size(dcm) == (50, 20)
    with pytest.raises(ImageReadError) as exc:
        read_image_size(make_dicom(tmp_path / "none.dcm", None))
    assert exc.value.reason == "no_pixel_data"
    with pytest.raises(ImageReadError) as exc:
        read_image_size(tmp_path / "missing.png")
    assert exc.value.reason == "missing"


def test_load_mask(tmp_path):
    Image.fromarray(np.array([[0, 1], [0, 255]], np.uint8)).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, True], [False, True]]
    (tmp_path / "t.png").write_bytes((tmp_path / "m.png").read_bytes()[:30])
    with pytest.raises(ImageReadError):
        load_mask(tmp_path / "t.png")
