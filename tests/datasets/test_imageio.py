"""load_image: every supported input becomes 8-bit RGB; every bad input raises ImageReadError."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.imageio import ImageReadError, is_dicom, load_image, scale_to_uint8
from domainclip.errors import DataError
from tests.datasets.helpers import PATIENT_ID, PATIENT_NAME, make_dicom, save_rgb

_PIL_DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS


def _px(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


# ---------------------------------------------------------------------------------------------
# Ordinary formats


def test_rgb_jpeg_and_png(tmp_path):
    for name in ("a.jpg", "a.png", "a.bmp"):
        img = load_image(save_rgb(tmp_path / name, (8, 6)))
        assert img.size == (8, 6)
        assert abs(int(_px(img)[0, 0, 0]) - 200) <= 3


def test_16bit_png_scaled_by_actual_range_not_clipped(tmp_path):
    # 12-bit detector data in a 16-bit PNG: values 100..4000. Clipping to 8 bit would saturate,
    # scaling by the 16-bit type range would give a nearly black image.
    arr = np.array([[100, 1050], [2050, 4000]], dtype=np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    got = _px(load_image(path))[..., 0]
    expected = np.rint((arr.astype(float) - 100) / 3900 * 255)
    np.testing.assert_allclose(got, expected, atol=1)
    assert got.min() == 0 and got.max() == 255


def test_float_and_int32_modes(tmp_path):
    f = Image.fromarray(np.array([[-1.0, 0.0], [1.0, np.nan]], dtype=np.float32), mode="F")
    f.save(tmp_path / "f.tif")
    got = _px(load_image(tmp_path / "f.tif"))[..., 0]
    assert got.tolist() == [[0, 128], [255, 0]]
    i = Image.fromarray(np.array([[-5, 5]], dtype=np.int32), mode="I")
    i.save(tmp_path / "i.tif")
    assert _px(load_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 255]


def test_grayscale_and_bilevel(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert _px(load_image(tmp_path / "l.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    assert _px(load_image(tmp_path / "b.png"))[0, 0].tolist() == [255, 255, 255]


def test_palette_expanded(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] + [0] * 765)
    p.save(tmp_path / "p.png")
    assert _px(load_image(tmp_path / "p.png"))[0, 0].tolist() == [10, 20, 30]


def test_palette_with_transparency_flattened_on_black(tmp_path):
    p = Image.new("P", (2, 1), 0)
    p.putpalette([250, 250, 250, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "pt.png", transparency=0)  # index 0 fully transparent
    got = _px(load_image(tmp_path / "pt.png"))
    assert got[0, 0].tolist() == [0, 0, 0]
    assert got[0, 1].tolist() == [10, 20, 30]


def test_rgba_and_la_alpha_composited_onto_black(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (200, 100, 50, 0))
    rgba.save(tmp_path / "a.png")
    got = _px(load_image(tmp_path / "a.png"))
    assert got[0, 0].tolist() == [200, 100, 50]
    assert got[0, 1].tolist() == [0, 0, 0]
    la = Image.new("LA", (1, 1), (200, 128))
    la.save(tmp_path / "la.png")
    assert abs(int(_px(load_image(tmp_path / "la.png"))[0, 0, 0]) - 100) <= 1


def test_exif_orientation_applied(tmp_path):
    # Stored 20 wide x 10 high with orientation 6 ("rotate 90 CW to display"): shown 10 x 20.
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white in stored orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (10, 20)
    px = _px(out)
    # after a 90-degree clockwise rotation the stored left half is the displayed top half
    assert px[:8].mean() > 200 and px[12:].mean() < 50


def test_huge_image_downscaled_to_max_side(tmp_path):
    Image.new("RGB", (3000, 1000), (9, 9, 9)).save(tmp_path / "big.jpg")
    Image.new("L", (3000, 1000), 9).save(tmp_path / "big.png")
    for name in ("big.jpg", "big.png"):
        out = load_image(tmp_path / name, max_side=600)
        assert max(out.size) == 600 and out.size[0] / out.size[1] == pytest.approx(3, rel=0.02)


def test_pixel_limit_is_enforced_and_configurable(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300), 1).save(path)
    with pytest.raises(ImageReadError, match="exceeds max_pixels") as err:
        load_image(path, max_pixels=100_000)
    assert err.value.reason == "too_large"
    assert load_image(path, max_pixels=200_000).size == (400, 300)
    # PIL's process-wide limit is restored afterwards
    assert Image.MAX_IMAGE_PIXELS == _PIL_DEFAULT_LIMIT


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as err:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value) and err.value.reason == "missing"
    assert isinstance(err.value, DataError)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="zero-byte") as err:
        load_image(tmp_path / "empty.jpg")
    assert "empty.jpg" in str(err.value) and err.value.reason == "empty"


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as err:
        load_image(tmp_path / "cut.jpg")
    assert "cut.jpg" in str(err.value) and err.value.reason == "truncated"
    # cut inside the header: fails already when opening
    (tmp_path / "head.jpg").write_bytes(data[:300])
    with pytest.raises(ImageReadError, match="truncated") as err:
        load_image(tmp_path / "head.jpg")
    assert err.value.reason == "truncated"


def test_text_with_image_extension(tmp_path):
    (tmp_path / "page.png").write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(ImageReadError, match="not a recognised image format") as err:
        load_image(tmp_path / "page.png")
    assert "page.png" in str(err.value) and err.value.reason == "not_image"


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(tmp_path / "d.png")


# ---------------------------------------------------------------------------------------------
# DICOM

PX = np.array([[0, 500], [1000, 4095]])


def _gray(path) -> list[list[int]]:
    return _px(load_image(path))[..., 0].tolist()


def test_dicom_detected_by_magic_without_suffix(tmp_path):
    path = make_dicom(tmp_path / "no_suffix", PX)
    assert is_dicom(path)
    assert not is_dicom(save_rgb(tmp_path / "a.png"))
    assert _gray(path) == [[0, 31], [62, 255]]  # min-max without VOI data


def test_dicom_monochrome1_inverted(tmp_path):
    m2 = _gray(make_dicom(tmp_path / "m2.dcm", PX))
    m1 = _gray(make_dicom(tmp_path / "m1.dcm", PX, photometric="MONOCHROME1"))
    assert (np.array(m1) == 255 - np.array(m2)).all()


def test_dicom_window_applied(tmp_path):
    # window 500..1500: 0 and 500 -> black, 1000 -> mid grey, 4095 -> white
    got = _gray(make_dicom(tmp_path / "w.dcm", PX, window=(1000, 1000)))
    assert got[0] == [0, 0] and got[1][1] == 255 and abs(got[1][0] - 128) <= 1


def test_dicom_rescale_slope_intercept_applied_before_window(tmp_path):
    # Rescaled values: 2*raw - 1000 = [-1000, 0, 1000, 7190]. The window [-1000, 1000] is given
    # in rescaled units, so raw 500 (rescaled 0) must land mid-grey. Without the rescale, raw 500
    # would sit at 3/4 of the window.
    got = _gray(make_dicom(tmp_path / "r.dcm", PX, slope=2.0, intercept=-1000, window=(0, 2000)))
    assert got[0][0] == 0 and abs(got[0][1] - 128) <= 1 and got[1] == [255, 255]


def test_dicom_multiframe_uses_first_frame_with_warning(tmp_path, caplog):
    path = make_dicom(tmp_path / "mf.dcm", np.stack([PX, PX[::-1, ::-1]]))
    with caplog.at_level(logging.WARNING):
        got = _gray(path)
    assert got == [[0, 31], [62, 255]]
    assert "2 frames" in caplog.text and "first frame" in caplog.text


def test_dicom_without_pixel_data_names_file_but_no_patient(tmp_path, caplog):
    path = make_dicom(tmp_path / "sr.dcm", None)
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError) as err:
        load_image(path)
    msg = str(err.value)
    assert "sr.dcm" in msg and "no pixel data" in msg and err.value.reason == "no_pixel_data"
    for secret in (PATIENT_NAME, "Doe", "Johnathan", PATIENT_ID, "19700101"):
        assert secret not in msg
        assert secret not in caplog.text


def test_dicom_never_logs_patient_tags(tmp_path, caplog):
    path = make_dicom(tmp_path / "ok.dcm", np.stack([PX, PX]), window=(1000, 1000))
    with caplog.at_level(logging.DEBUG):
        load_image(path)
    assert caplog.records  # the multi-frame warning was logged ...
    for secret in (PATIENT_NAME, "Johnathan", PATIENT_ID, "19700101"):
        assert secret not in caplog.text  # ... without patient data


def test_dicom_garbage_with_dcm_suffix(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(ImageReadError, match="not a DICOM file") as err:
        load_image(tmp_path / "bad.dcm")
    assert "bad.dcm" in str(err.value) and err.value.reason == "not_image"


def test_scale_to_uint8_edge_cases():
    assert scale_to_uint8(np.full((2, 2), 7.0)).tolist() == [[0, 0], [0, 0]]
    assert scale_to_uint8(np.array([np.nan, np.inf])).tolist() == [0, 0]
    assert scale_to_uint8(np.array([0, 5, 10]), 0, 20).tolist() == [0, 64, 128]
