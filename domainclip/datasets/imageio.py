"""Robust image reading: every supported file becomes an 8-bit RGB `PIL.Image`.

Handles JPEG/PNG/TIFF/BMP (8- and 16-bit, float), modes 1/L/LA/RGB/RGBA/P/I;16/I/F/CMYK, EXIF
orientation, very large images (bounded decode, downscaled to `max_side`) and DICOM via pydicom
(modality LUT / rescale slope+intercept, VOI LUT / windowing, MONOCHROME1 inversion, first frame
of multi-frame objects).

Every failure raises `ImageReadError` (a `DataError`) naming the file and saying what is wrong.
DICOM privacy: messages and logs never contain patient attributes. pydicom's own exception
texts and warnings can quote element values, so they are scrubbed of the file's patient-tag
values before they reach a message or the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from domainclip.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 4096
# Decoded pixel budget before downscaling (about 0.9 GB as RGB). PIL's own default (~89 MP)
# rejects legitimate line-scan and detector images; raise `max_pixels` for bigger genuine files.
DEFAULT_MAX_PIXELS = 300_000_000
DICOM_SUFFIXES = (".dcm", ".dicom")

# Attributes that identify a patient. Their values are scrubbed from any text we emit.
_PATIENT_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "StudyID",
)

# PIL's bomb limit is a module global; changing it only while opening, under a lock, keeps the
# rest of the process on PIL's defaults (no lasting global mutation).
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(DataError):
    """An image file cannot be read. `path` is the file, `reason` a short machine-readable kind:
    missing, not_a_file, empty, not_image, truncated, too_large, no_pixel_data, dicom, decode."""

    def __init__(self, path: str | os.PathLike[str], reason: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = reason


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True if the file has a DICOM suffix or the ``DICM`` magic at byte offset 128."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_image(
    path: str | os.PathLike[str],
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read any supported image file as an 8-bit RGB image.

    Args:
        path: image file (JPEG, PNG, TIFF, BMP, ... or DICOM).
        max_side: images whose longer side exceeds this are downscaled (aspect kept).
        max_pixels: refuse files with more pixels than this (decompression-bomb guard).

    Returns:
        `PIL.Image` in mode "RGB", longer side <= `max_side`, EXIF orientation applied.

    Raises:
        ImageReadError: missing / empty / truncated / unrecognised file, too many pixels,
            DICOM without pixel data or with undecodable pixel data.
    """
    p = Path(path)
    check_image_file(p)
    img = _load_dicom(p, max_pixels) if is_dicom(p) else _load_pil(p, max_side, max_pixels)
    if max(img.size) > max_side:
        # thumbnail keeps the aspect ratio and uses a reducing gap (fast and antialiased).
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img


def read_image_size(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """(width, height) of an image as `load_image` orients it, from the header only.

    Nothing is decoded: PIL reads the header (EXIF orientations 5-8, a quarter turn, swap the
    sides as `load_image` does), DICOM is parsed up to the pixel data (Rows, Columns). This is
    the cheap way to know an image's geometry for many files; it does not prove that the pixel
    data decodes (`load_image` does).

    Raises:
        ImageReadError: missing / empty / unrecognised file, header cut off, too many pixels,
            DICOM without image attributes.
    """
    p = Path(path)
    check_image_file(p)
    if is_dicom(p):
        return _dicom_size(p)
    img = _open_pil(p, max_pixels)
    try:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # malformed EXIF: load_image ignores it too
            orientation = 1
    finally:
        img.close()
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A mask file (PNG, non-zero grey value = finding) as a bool array [H, W], full resolution.

    Raises:
        ImageReadError: as `load_image` (missing, empty, not an image, truncated, too large).
    """
    p = Path(path)
    check_image_file(p)
    img = _open_pil(p, max_pixels)
    try:
        img.load()
        return np.asarray(img.convert("L")) > 0
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            p, "truncated", f"cannot decode mask data ({exc}); the file is truncated or corrupt"
        ) from exc
    finally:
        img.close()


def _dicom_size(p: Path) -> tuple[int, int]:
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:
        # pydicom's message may quote element values; only the type name is safe here.
        raise ImageReadError(p, "dicom", f"cannot parse DICOM ({type(exc).__name__})") from None
    if rows < 1 or cols < 1:
        raise ImageReadError(
            p, "no_pixel_data", "DICOM header has no image size (Rows, Columns); not an image?"
        )
    return cols, rows


def check_image_file(p: Path) -> None:
    """That `p` is a non-empty regular file (no decoding): the first check of every reader.

    Raises:
        ImageReadError: reason "missing" (also a broken or looping symbolic link), "not_a_file"
            (a directory, device, ...) or "empty".
    """
    if not p.exists():
        if p.is_symlink():  # exists() follows the link: its target is missing or it loops
            raise ImageReadError(
                p, "missing", "a symbolic link whose target does not exist or that loops"
            )
        raise ImageReadError(p, "missing", "file not found (check the path in the manifest)")
    if not p.is_file():
        raise ImageReadError(p, "not_a_file", "is not a regular file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty", "zero-byte file (an interrupted copy or download?)")


# ----------------------------------------------------------------------------------------------
# Ordinary image formats via PIL


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                # We enforce the limit ourselves below; PIL's warning at 1x would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open_pil(p: Path, max_pixels: int) -> Image.Image:
    """`Image.open` (header only, nothing decoded yet) with every failure as an ImageReadError."""
    try:
        with _pil_pixel_limit(max_pixels):
            return Image.open(p)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(p, "too_large", f"{exc}; pass a larger max_pixels if genuine") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            p,
            "not_image",
            f"content is not a recognised image format despite the {p.suffix or 'missing'} "
            "extension (an HTML error page or text file saved as an image?)",
        ) from exc
    except OSError as exc:
        if "truncat" in str(exc).lower():  # cut off inside the header
            raise ImageReadError(
                p, "truncated", f"cannot read image header ({exc}); the file is truncated"
            ) from exc
        raise ImageReadError(p, "decode", f"cannot open image: {exc}") from exc


def _load_pil(p: Path, max_side: int, max_pixels: int) -> Image.Image:
    img = _open_pil(p, max_pixels)
    try:
        return _decode_pil(p, img, max_side, max_pixels)
    finally:
        img.close()


def _decode_pil(p: Path, img: Image.Image, max_side: int, max_pixels: int) -> Image.Image:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageReadError(
            p,
            "too_large",
            f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}; "
            "pass a larger max_pixels if the image is genuine",
        )
    if getattr(img, "n_frames", 1) > 1:
        logger.debug("%s has %d frames; using the first", p, img.n_frames)
    if img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is far above max_side.
        img.draft(None, (max_side, max_side))
    try:
        # Force the full decode now: a truncated file must fail here, not silently later.
        # ImageFile.LOAD_TRUNCATED_IMAGES is deliberately left False.
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            p, "truncated", f"cannot decode image data ({exc}); the file is truncated or corrupt"
        ) from exc
    rgb = to_rgb(_exif_transpose(p, img))
    # The caller closes `img`, and a closed PIL image is unusable: never return it.
    return img.copy() if rgb is img else rgb


def _exif_transpose(p: Path, img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not make a decodable image unusable
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", p, exc)
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    High bit-depth modes (I;16*, I, F) are scaled by the image's own min..max range (a 12-bit
    detector image would otherwise be nearly black when clipped, or saturated white). Alpha is
    composited onto black: in radiographs and segmented/cut-out inspection images, transparent
    areas mean "no signal", which is black; a white matte would add a bright artificial border
    that a model could learn as a feature.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(scale_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
        mode = "RGBA"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def scale_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly map ``[lo, hi]`` (default: the array's finite min/max) to uint8 0..255.

    NaN/inf become 0. A constant image maps to all zeros.
    """
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    if lo is None:
        lo = float(a[finite].min())
    if hi is None:
        hi = float(a[finite].max())
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# DICOM


def _patient_values(ds: Any) -> list[str]:
    values: list[str] = []
    for tag in _PATIENT_TAGS:
        try:
            v = ds.get(tag)
        except Exception:  # a malformed element: its raw value cannot leak via us either
            continue
        if v is None or v == "":
            continue
        items = v if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
        for item in items:
            s = str(item).strip()
            if s:
                values.append(s)
                values.extend(part for part in s.split("^") if len(part.strip()) >= 2)
    # Longest first so "Doe^John" is replaced before "Doe".
    return sorted(set(values), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "<redacted>")
    return text


def _load_dicom(p: Path, max_pixels: int) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    secrets: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p)
        except InvalidDicomError:
            # Raw datasets without the 128-byte preamble are still valid DICOM.
            try:
                ds = pydicom.dcmread(p, force=True)
            except Exception as exc:
                raise ImageReadError(
                    p, "dicom", f"cannot parse DICOM ({type(exc).__name__})"
                ) from None
            if not any(t in ds for t in ("SOPClassUID", "PixelData", "Rows")):
                # force=True "parses" any bytes; without the basics it was not DICOM at all.
                raise ImageReadError(
                    p,
                    "not_image",
                    "not a DICOM file (no DICM header and no DICOM image attributes) "
                    f"despite the {p.suffix or 'missing'} extension",
                ) from None
        except Exception as exc:
            # pydicom's message may quote element values; only the type name is safe here.
            raise ImageReadError(p, "dicom", f"cannot parse DICOM ({type(exc).__name__})") from None
        secrets = _patient_values(ds)
        try:
            return _dicom_to_image(p, ds, max_pixels, secrets)
        finally:
            for w in caught:
                logger.debug("%s: pydicom: %s", p, _scrub(str(w.message), secrets))


def _dicom_to_image(p: Path, ds: Any, max_pixels: int, secrets: list[str]) -> Image.Image:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            p,
            "no_pixel_data",
            "DICOM object has no pixel data (a structured report, presentation state or "
            "header-only file?); remove it from the manifest",
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ImageReadError(
            p, "too_large", f"{cols}x{rows} pixels exceeds max_pixels={max_pixels}"
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if n_frames > 1:
            # Decode only the first frame: a long cine loop would otherwise fill memory.
            ds.pixel_array_options(index=0)
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise ImageReadError(
            p,
            "decode",
            f"cannot decode DICOM pixel data ({name}): {_scrub(str(exc), secrets)}. "
            "Compressed data may need an extra decoder (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg)",
        ) from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        logger.warning("%s: multi-frame DICOM with %d frames; using the first frame", p, n_frames)
        if arr.ndim == (4 if samples > 1 else 3):  # a decoder that ignored the frame index
            arr = arr[0]
    if samples > 1:
        # pydicom already converts YBR to RGB; only the bit depth needs mapping.
        rgb = arr if arr.dtype == np.uint8 else scale_to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB")
    gray = _dicom_gray_to_uint8(p, ds, arr, apply_modality_lut, apply_voi_lut)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: the minimum value is displayed white
    return Image.fromarray(gray, mode="L").convert("RGB")


def _dicom_gray_to_uint8(
    p: Path, ds: Any, arr: np.ndarray, apply_modality_lut: Any, apply_voi_lut: Any
) -> np.ndarray:
    """Modality LUT (rescale) -> VOI LUT / window scaled by its output range -> uint8.

    Without usable VOI information the rescaled values are min-max scaled.
    """
    values = apply_modality_lut(arr, ds)
    out_range = _voi_output_range(ds)
    if out_range is not None:
        try:
            windowed = apply_voi_lut(values, ds, index=0)
            return scale_to_uint8(windowed, *out_range)
        except Exception as exc:
            logger.warning(
                "%s: VOI LUT / window not usable (%s); using min-max scaling",
                p,
                type(exc).__name__,
            )
    return scale_to_uint8(values)


def _voi_output_range(ds: Any) -> tuple[float, float] | None:
    """Output range of pydicom's apply_voi_lut for this dataset, or None without VOI data.

    Mirrors pydicom: a VOI LUT Sequence outputs 0..2**bits-1; windowing outputs the stored
    value range after the modality rescale.
    """
    seq = ds.get("VOILUTSequence")
    if seq:
        bits = int(seq[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    else:
        bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        if int(ds.get("PixelRepresentation", 0)) == 0:
            lo, hi = 0.0, float(2**bits_stored - 1)
        else:
            lo, hi = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return (min(lo, hi), max(lo, hi))
