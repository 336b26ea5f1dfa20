"""Pointing game and energy-in-region on hand-built maps, masks and boxes in the model's view."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.transforms import eval_transform
from domainclip.explain import ExplainError
from domainclip.explain.inputs import (
    boxes_to_mask,
    mask_to_view,
    original_map,
    prepare_image,
    region_from_meta,
)
from domainclip.explain.localisation import (
    energy_in_mask,
    localise,
    pointing_game,
    random_map_baseline,
    summarise,
)


def _square_mask(n=10, y=slice(2, 5), x=slice(3, 7)):
    m = np.zeros((n, n), dtype=bool)
    m[y, x] = True
    return m  # 12 pixels of 100


def test_pointing_game_hits_and_misses():
    mask = _square_mask()
    smap = np.zeros((10, 10))
    smap[3, 4] = 5.0
    assert pointing_game(smap, mask) == 1.0
    smap[3, 4], smap[9, 9] = 0.0, 5.0
    assert pointing_game(smap, mask) == 0.0
    # (9, 9) is 5 rows below and 3 columns right of the region's corner (4, 6): sqrt(34) = 5.83.
    assert pointing_game(smap, mask, tolerance=5.84) == 1.0
    assert pointing_game(smap, mask, tolerance=5.82) == 0.0


def test_pointing_game_ties_score_the_expected_hit():
    mask = _square_mask()
    smap = np.zeros((10, 10))
    smap[3, 4] = smap[9, 9] = smap[0, 0] = smap[4, 6] = 1.0  # two of four maxima inside
    assert pointing_game(smap, mask) == 0.5
    assert pointing_game(np.ones((10, 10)), mask) == pytest.approx(0.12)  # constant = random


def test_energy_in_mask_is_the_positive_mass_share():
    mask = _square_mask()
    smap = np.zeros((10, 10))
    smap[2, 3] = 3.0  # inside
    smap[8, 8] = 1.0  # outside
    smap[0, 0] = -50.0  # negative evidence does not count
    assert energy_in_mask(smap, mask) == pytest.approx(0.75)
    assert math.isnan(energy_in_mask(-np.ones((10, 10)), mask))
    assert energy_in_mask(np.ones((10, 10)), mask) == pytest.approx(0.12)


def test_localise_reports_random_baselines_and_they_match_random_maps():
    mask = _square_mask()
    smap = np.zeros((10, 10))
    smap[3, 4] = 1.0
    loc = localise(smap, mask, tolerance=1.0)
    assert loc.pointing == 1.0 and loc.energy == 1.0
    assert loc.area == pytest.approx(0.12)
    # Dilating a 3x4 block by 1 px (Euclidean) adds its 4 sides: 12 + 2*4 + 2*3 = 26 pixels.
    assert loc.pointing_baseline == pytest.approx(0.26)
    emp = random_map_baseline(mask, n=2000, seed=1, tolerance=1.0)
    assert emp["pointing"] == pytest.approx(loc.pointing_baseline, abs=0.03)
    assert emp["energy"] == pytest.approx(loc.area, abs=0.01)


def test_summarise_compares_with_random():
    mask = _square_mask()
    inside, outside = np.zeros((10, 10)), np.zeros((10, 10))
    inside[3, 4] = 1.0
    outside[9, 9] = 1.0
    s = summarise([localise(inside, mask), localise(outside, mask)])
    assert s["n"] == 2
    assert s["pointing"] == 0.5 and s["pointing_random"] == pytest.approx(0.12)
    assert s["energy"] == 0.5 and s["energy_gain"] == pytest.approx(0.38)


def test_bad_regions_are_refused():
    with pytest.raises(ExplainError, match="empty"):
        localise(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ExplainError, match="same"):
        localise(np.ones((4, 4)), np.ones((5, 5)))


def test_boxes_to_mask_uses_inclusive_pixel_corners():
    m = boxes_to_mask([[1, 2, 3, 4, "scratch"], [8, 8, 20, 20]], width=10, height=10)
    assert m[2:5, 1:4].all() and m[2:5, 1:4].sum() == 9
    assert m[8:, 8:].all()  # clipped to the image
    assert m.sum() == 9 + 4
    with pytest.raises(ExplainError, match="box"):
        boxes_to_mask([[1, 2]], 10, 10)


def test_masks_follow_the_backbone_resize_and_centre_crop(tiny_vit):
    """A 128x256 mask goes through the same shortest-side resize + centre crop as the image."""
    crop = eval_transform(tiny_vit, "crop")
    mask = np.zeros((128, 256), dtype=bool)
    mask[:, 96:160] = True  # the middle quarter of the width = the middle half of the crop
    view = mask_to_view(tiny_vit, mask, crop)  # 64 px: resize to 64x128, crop x in [32, 96)
    assert view.shape == (64, 64)
    assert view[:, 17:47].all()
    assert not view[:, :15].any() and not view[:, 49:].any()
    left = np.zeros((128, 256), dtype=bool)
    left[:, :64] = True  # cropped away entirely
    assert not mask_to_view(tiny_vit, left, crop).any()


def test_masks_follow_the_default_letterbox(tiny_vit):
    """Letterbox (the default): 128x256 -> 32x64 at y offset 16; no region is ever cut off."""
    left = np.zeros((128, 256), dtype=bool)
    left[:, :64] = True  # the part the crop policy cuts away
    view = mask_to_view(tiny_vit, left)
    assert view.shape == (64, 64)
    assert view[16:48, :16].all() and not view[:, 16:].any()
    assert not view[:16].any() and not view[48:].any()  # padding rows
    inp = prepare_image(tiny_vit, Image.fromarray(np.zeros((128, 256, 3), np.uint8)))
    assert inp.fit is not None and inp.fit.policy == "letterbox"
    assert inp.fit.map_box((0, 0, 64, 128)) == (0.0, 16.0, 16.0, 48.0)


def test_localisation_is_in_original_pixels_and_a_cut_off_finding_scores_zero(tiny_vit):
    """Maps go back to the original image through the input's Fit: under `crop` the cut-off ends
    are unseen (NaN), hold neither maximum nor mass, and a finding there scores 0 against a
    random baseline of 0 instead of being left out."""
    img = Image.fromarray(np.zeros((128, 256, 3), np.uint8))
    crop = eval_transform(tiny_vit, "crop")
    inp = prepare_image(tiny_vit, img, crop)
    smap = np.zeros((64, 64))
    smap[10, 40] = 1.0  # input (x=40, y=10): crop offset 32 at scale 1/2 -> original (144..145, 20..21)
    orig = original_map(inp, smap)
    assert orig.shape == (128, 256)
    assert np.isnan(orig[:, :64]).all() and np.isnan(orig[:, 192:]).all()  # cropped ends
    ys, xs = np.nonzero(np.nan_to_num(orig) == 1.0)
    assert set(ys) == {20, 21} and set(xs) == {144, 145}
    left = np.zeros((128, 256), dtype=bool)
    left[:, :64] = True  # cut off by the crop
    loc = localise(orig, left, 0.0, 15.0)
    assert loc.pointing == 0.0 and loc.pointing_baseline == 0.0 and loc.energy == 0.0
    hit = np.zeros((128, 256), dtype=bool)
    hit[15:25, 140:150] = True
    loc = localise(orig, hit, 0.0, 15.0)
    assert loc.pointing == 1.0 and loc.energy == 1.0
    assert loc.area == pytest.approx(hit.sum() / (128 * 128))  # seen pixels only
    with pytest.raises(ExplainError, match="no finite value"):
        localise(np.full((4, 4), np.nan), np.ones((4, 4), bool))


def test_region_from_meta_prefers_masks(tmp_path):
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 5:10] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    meta = {"mask": "m.png", "boxes": '[[0, 0, 29, 19, "x"]]'}
    got, kind = region_from_meta(meta, tmp_path, (30, 20))
    assert kind == "mask" and got.sum() == 25
    got, kind = region_from_meta({"boxes": meta["boxes"]}, tmp_path, (30, 20))
    assert kind == "boxes" and got.all()
    assert region_from_meta({}, tmp_path, (30, 20)) is None
    with pytest.raises(ExplainError, match="30x20"):
        region_from_meta(meta, tmp_path, (40, 20))
