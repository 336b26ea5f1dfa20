"""Fit policies as geometry: where pixels, boxes and masks land in the model input, and back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.geometry import plan_fit
from domainclip.errors import ConfigError


def _board(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    """CLIP's eval preprocessing written out by hand: resize the shorter side to `size`
    (bicubic), crop the centred size x size window (odd pixel dropped at the end)."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


@pytest.mark.parametrize("size", [(300, 200), (301, 200), (200, 377), (224, 224)])
def test_crop_policy_equals_the_centre_crop_preprocessing(size):
    img = _board(*size)
    fit = plan_fit(*size, 224, "crop")
    assert np.array_equal(np.asarray(fit.apply(img)), np.asarray(_centre_crop(img, 224)))


def test_letterbox_keeps_every_pixel_and_crop_cuts_the_ends():
    w, h = 1024, 256  # a long strip with findings at both ends
    left, right = (10, 100, 40, 130), (990, 100, 1020, 130)
    lb, cr = plan_fit(w, h, 224, "letterbox"), plan_fit(w, h, 224, "crop")
    assert lb.box_visibility(left)[0] == pytest.approx(1.0)
    assert lb.box_visibility(right)[0] == pytest.approx(1.0)
    assert cr.box_visibility(left)[0] == 0.0 and cr.box_visibility(right)[0] == 0.0
    # a 30 px finding is 30 * 224 / 1024 = 6.6 px in the letterboxed input
    assert lb.box_visibility(left)[1] == pytest.approx(30 * 224 / 1024, abs=0.3)
    out = np.asarray(lb.apply(_board(w, h), fill=(1, 2, 3)))
    assert out.shape == (224, 224, 3)
    assert (out[0, 0] == (1, 2, 3)).all() and (out[-1, -1] == (1, 2, 3)).all()  # padding


def test_stretch_maps_corners_to_corners():
    fit = plan_fit(640, 480, 224, "stretch")
    assert fit.map_box((0, 0, 640, 480)) == (0.0, 0.0, 224.0, 224.0)


def test_mask_follows_the_image_and_maps_back():
    w, h = 400, 100
    mask = np.zeros((h, w), np.uint8)
    mask[40:60, 300:340] = 255
    fit = plan_fit(w, h, 200, "letterbox")
    m_in = np.asarray(fit.apply(Image.fromarray(mask), nearest=True))
    assert set(np.unique(m_in)) <= {0, 255}  # nearest keeps label values
    ys, xs = np.nonzero(m_in)
    box = fit.map_box((300, 40, 340, 60))
    assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]
    back = fit.to_original(m_in.astype(float))
    assert back.shape == (h, w) and np.nanmax(back[40:60, 300:340]) == 255
    assert np.nanmean(back[40:60, 300:340] > 0) > 0.8


def test_cropped_region_maps_back_to_nan():
    fit = plan_fit(400, 100, 100, "crop")
    back = fit.to_original(np.ones((100, 100)))
    assert np.isnan(back[:, 0]).all() and np.isnan(back[:, -1]).all() and (back[:, 200] == 1).all()


def test_bad_policy_and_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown fit policy 'pad'.*letterbox"):
        plan_fit(10, 10, 5, "pad")
    with pytest.raises(ConfigError, match="cannot fit a 0x10 image"):
        plan_fit(0, 10, 5)
