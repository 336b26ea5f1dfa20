"""Transform presets: shapes, normalisation, eval geometry, seeded reproducibility, no CXR flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from domainclip.datasets.transforms import PRESETS, build_transform, resize_center_crop
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


def test_eval_is_shortest_side_resize_plus_center_crop():
    # 40 wide x 20 high with a red left quarter: resized to 20x10, the red part is x < 5, and the
    # centred 10x10 crop (x in 5..15) cuts it away.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10, 0] = 255
    out = resize_center_crop(Image.fromarray(arr), 10)
    assert out.size == (10, 10)
    assert np.asarray(out)[..., 0].max() < 40
    tall = resize_center_crop(Image.new("RGB", (10, 30)), 10)
    assert tall.size == (10, 10)


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


def test_non_rgb_input_converted():
    tf = build_transform("none", 8, MEAN, STD, train=False)
    assert tf(Image.new("L", (10, 10), 10)).shape == (3, 8, 8)
