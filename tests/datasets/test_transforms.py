"""Transform presets: shapes, normalisation, eval geometry, seeded reproducibility, no CXR flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from domainclip.datasets.geometry import plan_fit
from domainclip.datasets.transforms import PRESETS, build_transform
from domainclip.errors import ConfigError

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _noise(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _left_bright(size: int = 32) -> Image.Image:
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, : size // 2] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_dtype(preset, train):
    tf = build_transform(preset, 24, MEAN, STD, train=train, seed=0)
    out = tf(_noise())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_eval_transform_normalises_with_given_mean_std():
    tf = build_transform("none", 8, MEAN, STD, train=False)
    out = tf(Image.new("RGB", (8, 8), (255, 0, 128)))
    # (x/255 - 0.5) / 0.25
    assert out[0].mean().item() == pytest.approx(2.0, abs=1e-5)
    assert out[1].mean().item() == pytest.approx(-2.0, abs=1e-5)
    assert out[2].mean().item() == pytest.approx((128 / 255 - 0.5) / 0.25, abs=1e-5)


def _crop(img: Image.Image, size: int) -> Image.Image:
    return plan_fit(*img.size, size, "crop").apply(img)


def test_crop_fit_is_shortest_side_resize_plus_center_crop():
    # 40 wide x 20 high with a red left quarter: resized to 20x10, the red part is x < 5, and the
    # centred 10x10 crop (x in 5..15) cuts it away.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10, 0] = 255
    out = _crop(Image.fromarray(arr), 10)
    assert out.size == (10, 10)
    assert np.asarray(out)[..., 0].max() < 40
    tall = _crop(Image.new("RGB", (10, 30)), 10)
    assert tall.size == (10, 10)
    # the transform with fit="crop" is exactly that geometry, normalised
    tf = build_transform("none", 10, MEAN, STD, train=False, fit="crop")
    red = (tf(Image.fromarray(arr))[0] * STD[0] + MEAN[0]) * 255
    assert red.max() < 40


def test_letterbox_fit_keeps_the_ends_and_pads_with_zero():
    # the same image letterboxed: the red quarter stays in the input, padding normalises to ~0
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10, 0] = 255
    x = build_transform("none", 10, MEAN, STD, train=False, fit="letterbox")(Image.fromarray(arr))
    red = (x[0] * STD[0] + MEAN[0]) * 255
    assert red[2:7, :2].min() > 200  # rows 2..7 hold the resized image (10x5), red at the left
    assert x[:, 0].abs().max() < 1 / 255 / STD[0] + 1e-6  # padding row: the mean colour
    assert x[:, -1].abs().max() < 1 / 255 / STD[0] + 1e-6


@pytest.mark.parametrize("fit", ["letterbox", "crop", "stretch"])
def test_square_images_are_the_same_under_every_fit(fit):
    img = _noise(48, 48)
    ref = build_transform("none", 24, MEAN, STD, train=False, fit="letterbox")(img)
    assert torch.equal(build_transform("none", 24, MEAN, STD, train=False, fit=fit)(img), ref)


def test_eval_is_deterministic_and_matches_across_presets():
    img = _noise()
    outs = [
        build_transform(p, 16, MEAN, STD, train=False, seed=s)(img) for p in PRESETS for s in (0, 1)
    ]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@pytest.mark.parametrize("preset", ["industrial", "cxr"])
def test_same_seed_same_augmentations(preset):
    imgs = [_noise(seed=i) for i in range(6)]
    a = build_transform(preset, 24, MEAN, STD, train=True, seed=123)
    b = build_transform(preset, 24, MEAN, STD, train=True, seed=123)
    c = build_transform(preset, 24, MEAN, STD, train=True, seed=124)
    out_a = torch.stack([a(im) for im in imgs])
    out_b = torch.stack([b(im) for im in imgs])
    out_c = torch.stack([c(im) for im in imgs])
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)
    # reseed restarts the stream
    a.reseed(123)
    assert torch.equal(torch.stack([a(im) for im in imgs]), out_a)


def test_train_augmentation_changes_images():
    tf = build_transform("industrial", 24, MEAN, STD, train=True, seed=0)
    ev = build_transform("industrial", 24, MEAN, STD, train=False)
    img = _noise()
    assert any(not torch.equal(tf(img), ev(img)) for _ in range(5))


def test_industrial_flips_and_rotates():
    tf = build_transform("industrial", 32, MEAN, STD, train=True, seed=0)
    img = _left_bright()
    # where is the bright half? left / right / top / bottom
    sides = set()
    for _ in range(40):
        x = tf(img)[0]
        halves = {
            "left": x[:, :16].mean(),
            "right": x[:, 16:].mean(),
            "top": x[:16].mean(),
            "bottom": x[16:].mean(),
        }
        sides.add(max(halves, key=halves.get))
    assert sides == {"left", "right", "top", "bottom"}


def test_cxr_never_flips_left_right():
    # A left-bright image must stay left-bright under every CXR augmentation (laterality).
    tf = build_transform("cxr", 32, MEAN, STD, train=True, seed=0)
    img = _left_bright()
    for _ in range(60):
        x = tf(img)[0]
        assert x[:, :12].mean() > x[:, 20:].mean() + 1.0


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="industrial, cxr, none"):
        build_transform("xray", 24, MEAN, STD, train=True)
    with pytest.raises(ConfigError, match="image_size"):
        build_transform("none", 0, MEAN, STD, train=False)
    with pytest.raises(ConfigError, match="mean and std"):
        build_transform("none", 8, (0.5,), STD, train=False)
    with pytest.raises(ConfigError, match="fit policy 'pad'.*letterbox, crop, stretch"):
        build_transform("none", 8, MEAN, STD, train=False, fit="pad")


def test_non_rgb_input_converted():
    tf = build_transform("none", 8, MEAN, STD, train=False)
    assert tf(Image.new("L", (10, 10), 10)).shape == (3, 8, 8)


# --- masks and boxes move with the image (MONAI-style dict transform) -------------------------


def _sample_with_finding(w: int = 96, h: int = 48) -> dict:
    """A non-square image with one bright finding, its exact mask and its box."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    arr[6:18, 70:90] = 255
    mask[6:18, 70:90] = 1
    return {"image": Image.fromarray(arr), "mask": Image.fromarray(mask), "boxes": [[70, 6, 90, 18, "pit"]]}


def _covers(mask: torch.Tensor, box: list) -> bool:
    """The mask's pixels lie inside the box (1 px slack for resampling) and fill most of it."""
    ys, xs = np.nonzero(mask.numpy())
    x0, y0, x1, y1 = box[:4]
    inside = xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1
    area = (x1 - x0) * (y1 - y0)
    return bool(inside and len(xs) >= 0.7 * area)


def test_eval_dict_maps_mask_and_boxes_through_the_same_fit():
    tf = build_transform("none", 48, MEAN, STD, train=False, fit="letterbox")
    out = tf({**_sample_with_finding(), "text": "a pit", "label": ["pit"]})
    assert out["image"].shape == (3, 48, 48) and out["mask"].shape == (48, 48)
    assert out["mask"].dtype == torch.uint8 and set(out["mask"].unique().tolist()) == {0, 1}
    # letterbox 96x48 -> 48x24 at y offset 12: the box (70, 6, 90, 18) lands at (35, 15, 45, 21)
    assert out["boxes"] == [[35.0, 15.0, 45.0, 21.0, "pit"]] and out["boxes_dropped"] == 0
    assert _covers(out["mask"], out["boxes"][0])
    assert out["text"] == "a pit" and out["label"] == ["pit"]  # other keys pass through
    assert out["fit"].policy == "letterbox"
    # the image in the dict is the plain call's image
    assert torch.equal(out["image"], tf(_sample_with_finding()["image"]))


def test_crop_drops_and_counts_boxes_it_cuts_off():
    tf = build_transform("none", 48, MEAN, STD, train=False, fit="crop")
    out = tf(_sample_with_finding())  # 96x48 -> crop x in [24, 72): the finding at x 70..90 is cut
    assert out["boxes_dropped"] == 0 and out["boxes"][0][0] == pytest.approx(46.0)
    far = {**_sample_with_finding(), "boxes": [[80, 6, 95, 18, "pit"], [30, 10, 40, 20, "dent"]]}
    out = tf(far)
    assert out["boxes_dropped"] == 1 and [b[4] for b in out["boxes"]] == ["dent"]


@pytest.mark.parametrize("preset", ["industrial", "cxr"])
def test_augmented_mask_still_covers_its_box(preset):
    tf = build_transform(preset, 48, MEAN, STD, train=True, seed=3)
    seen = set()
    for _ in range(40):
        out = tf(_sample_with_finding())
        assert out["boxes_dropped"] == 0 and len(out["boxes"]) == 1
        box = out["boxes"][0]
        assert box[4] == "pit" and _covers(out["mask"], box)
        # the image's bright finding is where the mask is
        bright = (out["image"][0] * STD[0] + MEAN[0]) > 0.5  # finding 1.0, background 0
        assert (bright & out["mask"].bool()).sum() >= 0.6 * out["mask"].sum()
        seen.add(tuple(round(v) for v in box[:4]))
    if preset == "industrial":
        assert len(seen) >= 4  # flips and rotations really moved it


def test_dict_and_plain_calls_share_the_random_stream():
    a = build_transform("industrial", 32, MEAN, STD, train=True, seed=7)
    b = build_transform("industrial", 32, MEAN, STD, train=True, seed=7)
    s = _sample_with_finding()
    for _ in range(5):
        assert torch.equal(a(s)["image"], b(s["image"]))


def test_mask_of_another_size_is_a_clear_error():
    from domainclip.errors import DataError

    tf = build_transform("none", 32, MEAN, STD, train=False)
    bad = {**_sample_with_finding(), "mask": Image.new("L", (10, 10))}
    with pytest.raises(DataError, match="mask is 10x10 but its image is 96x48"):
        tf(bad)
