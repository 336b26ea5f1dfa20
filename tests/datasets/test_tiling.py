"""Tile plans: coverage, boxes/masks into tiles, stitching maps back (pure geometry)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.tiling import TileSettings, plan_tiles
from domainclip.errors import ConfigError


@pytest.mark.parametrize(
    ("w", "h", "size", "tile", "overlap"),
    [(1024, 384, 224, None, 0.25), (640, 640, 224, None, 0.0), (1000, 300, 128, 200, 0.5), (225, 224, 224, None, 0.25)],
)
def test_every_pixel_is_covered_and_last_tile_is_flush(w, h, size, tile, overlap):
    plan = plan_tiles(w, h, size, TileSettings(size=tile, overlap=overlap))
    cov = plan.coverage()
    assert cov.min() >= 1
    t = tile or size
    assert max(b.box[2] for b in plan.tiles) == w and max(b.box[3] for b in plan.tiles) == h
    assert all(b.box[2] - b.box[0] == min(t, w) and b.box[3] - b.box[1] == min(t, h) for b in plan.tiles)
    if overlap == 0 and w % t:  # windows overlap only as much as needed to stay inside
        assert cov.max() <= 4  # at most 2 windows per axis overlap


def test_counts_on_the_synthetic_strip():
    plan = plan_tiles(1024, 384, 224, TileSettings(overlap=0.25))
    # stride 168: x needs 1 + ceil(800/168) = 6 windows, y 1 + ceil(160/168) = 2
    assert len(plan) == 12
    xs = sorted({t.box[0] for t in plan.tiles})
    assert xs[0] == 0 and xs[-1] == 800 and len(xs) == 6
    assert all(t.fit.sx == 1.0 and t.fit.dx == 0.0 for t in plan.tiles)  # native resolution


def test_small_image_is_one_letterboxed_tile():
    plan = plan_tiles(100, 50, 224)
    assert len(plan) == 1
    fit = plan.tiles[0].fit
    assert fit.policy == "letterbox" and fit.sx == pytest.approx(2.24)
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    (crop,) = plan.crops(img, fill=(0, 0, 0))
    assert crop.size == (224, 224)
    arr = np.asarray(crop)
    assert arr[112, 112, 0] == 255 and arr[0, 0, 0] == 0  # image centred, padding above


def test_narrow_axis_is_padded_not_upscaled():
    plan = plan_tiles(1000, 100, 224)
    assert all(t.box[3] - t.box[1] == 100 for t in plan.tiles)
    assert all(t.fit.sy == 1.0 and t.fit.dy == 62.0 for t in plan.tiles)


def test_boxes_round_trip_through_tiles():
    plan = plan_tiles(1024, 384, 224, TileSettings(overlap=0.25))
    box = (500.0, 300.0, 520.0, 330.0)
    mapped = plan.map_box(box)
    hits = [i for i, m in enumerate(mapped) if m is not None]
    assert hits  # at least one tile holds it
    for i in hits:
        t, m = plan.tiles[i], mapped[i]
        # input px -> original px
        back = (
            (m[0] - t.fit.dx) / t.fit.sx + t.box[0],
            (m[1] - t.fit.dy) / t.fit.sy + t.box[1],
            (m[2] - t.fit.dx) / t.fit.sx + t.box[0],
            (m[3] - t.fit.dy) / t.fit.sy + t.box[1],
        )
        clipped = (max(box[0], t.box[0]), max(box[1], t.box[1]), min(box[2], t.box[2]), min(box[3], t.box[3]))
        assert back == pytest.approx(clipped)
    # some tile holds it whole
    assert any(m is not None and (m[2] - m[0], m[3] - m[1]) == pytest.approx((20, 30)) for m in mapped)
    misses = [i for i, m in enumerate(mapped) if m is None]
    assert all(plan.tiles[i].box[0] >= 520 or plan.tiles[i].box[2] <= 500 or plan.tiles[i].box[3] <= 300 for i in misses)


def test_mask_into_tiles_and_stitch_back_is_identity():
    rng = np.random.default_rng(0)
    mask = np.zeros((384, 1024), dtype=np.uint8)
    mask[300:330, 500:520] = 1
    plan = plan_tiles(1024, 384, 224, TileSettings(overlap=0.25))
    tiles = plan.map_mask(mask)
    assert tiles.shape == (len(plan), 224, 224)
    assert tiles.sum() >= 600  # the 20x30 defect, whole in at least one tile
    back = plan.stitch(tiles.astype(float))
    np.testing.assert_array_equal(back, mask.astype(float))
    # a known smooth map: every tile gets the original values, stitched exactly back
    field = rng.normal(size=(384, 1024))
    per_tile = plan.map_mask(np.ones_like(mask))  # 1 inside each window, 0 on padding
    assert per_tile.min() in (0, 1)
    crops = [t.fit.apply(Image.fromarray(field[t.box[1]:t.box[3], t.box[0]:t.box[2]].astype(np.float32), mode="F"), nearest=True) for t in plan.tiles]
    np.testing.assert_allclose(plan.stitch([np.asarray(c) for c in crops]), field, atol=1e-6)


def test_stitch_averages_overlaps():
    plan = plan_tiles(300, 100, 100, TileSettings(overlap=0.5))
    maps = [np.full((100, 100), float(i)) for i in range(len(plan))]
    out = plan.stitch(maps)
    assert len(plan) == 5  # starts 0, 50, 100, 150, 200
    assert out[0, 0] == 0.0 and out[0, 299] == 4.0
    assert out[50, 75] == pytest.approx(0.5)  # tiles 0 and 1
    assert out[50, 120] == pytest.approx(1.5)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="overlap"):
        TileSettings(overlap=0.95)
    with pytest.raises(ConfigError, match="aggregate"):
        TileSettings(aggregate="median")
    plan = plan_tiles(300, 100, 100)
    with pytest.raises(ConfigError, match="one map per tile"):
        plan.stitch([np.zeros((100, 100))])


def test_tile_transform_and_collate():
    import torch

    from domainclip.datasets.torch_dataset import collate_samples
    from domainclip.datasets.transforms import build_transform

    tf = build_transform("none", 64, (0.5,) * 3, (0.25,) * 3, train=False, fit="tile", tile=TileSettings(overlap=0.25))
    img = Image.new("RGB", (200, 70), (128, 128, 128))
    mask = np.zeros((70, 200), np.uint8)
    mask[10:20, 150:160] = 1
    out = tf({"image": img, "mask": mask, "boxes": [[150, 10, 160, 20, "pit"]]})
    plan = out["fit"]
    assert out["image"].shape == (len(plan), 3, 64, 64) and out["mask"].shape == (len(plan), 64, 64)
    assert tf.input == {"fit": "tile", "image_size": 64, "tile": {"size": None, "overlap": 0.25, "aggregate": "lse"}}
    holding = [k for k, b in enumerate(out["boxes"]) if b]
    assert holding and all(out["mask"][k].sum() > 0 for k in holding)
    np.testing.assert_array_equal(plan.stitch(out["mask"].numpy().astype(float)), mask)
    with pytest.raises(ConfigError, match="plan_tiles"):
        tf.plan(200, 70)
    sample = {"image": out["image"], "text": "t", "label": ["pit"], "group": "g", "path": "p", "meta": {}, "index": 0}
    small = dict(sample, image=tf(Image.new("RGB", (50, 40))), index=1)
    batch = collate_samples([sample, None, small], ["pit"])
    assert batch["n_tiles"] == [len(plan), 1] and batch["image"].shape[0] == len(plan) + 1
    assert torch.equal(batch["image"][: len(plan)], out["image"])
