"""Seeded procedural generator of metal-surface defect images with texts, boxes and masks.

This is the built-in data set of `domainclip demo`: it needs no download and no ../shared.
Each image shows a grey metal surface (brushed: directional streaks; cast: blotchy
low-frequency texture; random brightness, contrast and shading) with defects of ONE class:

* ``scratch``: 1-3 thin, long, slightly curved lines, bright or dark, smooth.
* ``pit``: 1-2 clusters of 2-4 small dark round spots (each spot is one box).
* ``crack``: 1-2 jagged dark lines with 1-3 side branches.
* ``patch``: 1-2 irregular blobs with a different brightness and a rougher texture.
* ``clean``: no defect ("a clean metal surface with no visible defects").

Geometry (one `Canvas` per image), so the geometry problems of real domain data can be reproduced:

* image size: square `size` x `size` (default 128); or every image `width` x `height`; or a list of
  `aspects` (width / height, e.g. ``1, 8:3``): `size` is then the SHORTER side and each image takes
  one entry of the list, the entries in turn within every class (so the shape never predicts the
  class; repeat an entry to give it more weight).
* defect size: by default relative to the shorter side (as on a square of that side), centres kept
  away from the edges by a fifth of the shorter side (a quarter for patches), so on a long strip
  defects reach its ends. With ``defect_size=(lo, hi)`` every defect's box has its longer side
  drawn uniformly from lo..hi pixels (independent of the image size) and the box is placed
  uniformly anywhere in the image, wholly inside it (pits: the cluster centre is).

Masks are exact: a mask pixel is 255 exactly where a defect changed the image, and every pixel
outside the mask equals the defect-free background (`render_sample` returns both, so tests can
check it). Boxes are ``[xmin, ymin, xmax, ymax, class]`` with exclusive xmax/ymax, one per
defect instance, as in the NEU-DET importer. Texts come from `describe_boxes` with the image's
own width and height and therefore state the true count, size and position (3x3 grid of the
image, also on non-square images).

Every image is drawn from its own generator seeded with ``(seed, index)``, so the same seed
gives byte-identical files, and image i (given its class and canvas) does not depend on n.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from domainclip.datasets.describe import describe_boxes
from domainclip.datasets.importers._common import ImportResult, Tally, finish_import
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

DEFECT_CLASSES: tuple[str, ...] = ("scratch", "pit", "crack", "patch")
CLEAN = "clean"
CLEAN_TEXT = "a clean metal surface with no visible defects"
DEFAULT_CLASSES: tuple[str, ...] = (*DEFECT_CLASSES, CLEAN)
SURFACE = "metal surface"
TEXTURES: tuple[str, ...] = ("brushed", "cast")
DEFAULT_SIZE = 128

_MIN_ALPHA = 0.35  # every mask pixel gets at least this opacity, so it visibly changes
_MIN_SIZE = 32  # below this (shorter side) defects cannot be told apart
_MAX_SIDE = 8192  # longest side: a guard against typos that would need gigabytes
_MIN_DEFECT = 4  # smallest defect box side (px) that still shows the defect's shape
_MAX_ASPECT = 16.0


@dataclass(frozen=True)
class Canvas:
    """The geometry of one image: its size and how large its defects are drawn.

    Attributes:
        width, height: image size in pixels.
        defect_size: (lo, hi) pixels, the range of each defect box's longer side; None draws
            defects relative to the shorter side (the original square generator's sizes).
    """

    width: int
    height: int
    defect_size: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width): the numpy shape of the image."""
        return self.height, self.width

    @property
    def original(self) -> bool:
        """A square with relative defects: drawn exactly as the first (square-only) generator,
        draw for draw, so its images stay byte-identical."""
        return self.width == self.height and self.defect_size is None

    @property
    def scale(self) -> int:
        """The shorter side: the reference length of relative defect sizes and textures."""
        return min(self.width, self.height)


@dataclass
class SyntheticSample:
    """One rendered image: uint8 arrays of shape (height, width) and the defect boxes."""

    image: np.ndarray
    background: np.ndarray  # the same surface without defects
    mask: np.ndarray  # 255 where a defect pixel is, else 0
    boxes: list[tuple[int, int, int, int, str]]
    label: str
    texture: str


# ----------------------------------------------------------------------------------------------
# Surfaces


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Smoothed Gaussian noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """`_unit_noise` with the blur done on a grid coarser by about sigma / 3 per axis and
    interpolated back (the same look at a fraction of the time for wide blurs)."""
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (2,))
    step = np.maximum(1, (sig // 3).astype(int))
    coarse = tuple(int(n) for n in -(-np.asarray(shape) // step))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sig / step, mode="wrap")
    zoom = (shape[0] / coarse[0], shape[1] / coarse[1])
    field = ndimage.zoom(field, zoom, order=1, mode="grid-wrap", grid_mode=True)[
        : shape[0], : shape[1]
    ]
    return (field - field.mean()) / (field.std() + 1e-8)


def _noise_fn(cv: Canvas) -> Callable[..., np.ndarray]:
    """The smooth-noise function for full-image fields: full resolution on `Canvas.original`,
    coarse otherwise."""
    return _unit_noise if cv.original else _coarse_noise


def _surface(rng: np.random.Generator, cv: Canvas, texture: str) -> np.ndarray:
    """A defect-free surface in [0, 1] (float64) of shape (height, width).

    `Canvas.original` images use full-resolution blurs (byte-identical to earlier versions);
    others blur on a coarser grid (`_coarse_noise`), which keeps large images cheap.
    """
    shape, size = cv.shape, cv.scale
    noise = _noise_fn(cv)
    base = rng.uniform(0.35, 0.65)
    if texture == "brushed":
        # Grinding/brushing leaves streaks along one direction: noise smoothed much more along it.
        if cv.original:  # the original order of draws
            streaks = noise(rng, shape, (0.6, size / 10))
            if rng.random() < 0.5:
                streaks = streaks.T
        else:
            along_x = rng.random() < 0.5
            streaks = noise(rng, shape, (0.6, size / 10) if along_x else (size / 10, 0.6))
        tex = rng.uniform(0.03, 0.06) * streaks + 0.015 * noise(rng, shape, size / 6)
    else:  # cast: blotchy low-frequency variation plus fine grain
        tex = rng.uniform(0.03, 0.06) * noise(rng, shape, size / 12)
        tex += rng.uniform(0.015, 0.03) * noise(rng, shape, 1.2)
    # Uneven illumination: a gentle linear gradient in a random direction.
    yy, xx = np.mgrid[0 : cv.height, 0 : cv.width] / max(shape) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(0.0, 0.12) * (np.cos(angle) * xx + np.sin(angle) * yy)
    grain = rng.uniform(0.005, 0.015) * rng.standard_normal(shape)
    return np.clip(base + tex + shading + grain, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Defect shapes: each returns (alpha, delta) where alpha (the image's shape) is 0 outside the
# defect and at least _MIN_ALPHA inside, and delta is the brightness change at full opacity.
# Relative sizes are drawn on the whole image. With `Canvas.defect_size` a shape is drawn in a
# small window, fitted until its box's longer side is the drawn size (`_fit_stroke`, `_fit_blob`,
# `_disk_alpha`), cropped to that box and then placed anywhere in the image (`_place`).


def _spot(rng: np.random.Generator, cv: Canvas, lo: float, hi: float) -> np.ndarray:
    """A defect centre (x, y), uniform between `lo` x the shorter side from the top/left edges
    and `1 - hi` x the shorter side from the bottom/right ones, so on a long strip defects reach
    its ends. On a square image: uniform in [lo, hi] * size (the original draw, bit for bit)."""
    u = rng.uniform(lo, hi, size=2)
    if cv.width == cv.height:
        return u * cv.width
    extent = np.array([cv.width, cv.height], dtype=float)
    first, last = lo * cv.scale, extent - (1.0 - hi) * cv.scale
    return first + (u - lo) / (hi - lo) * (last - first)


def _rasterize(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mark the pixels under a dense polyline (points as float (x, y) rows) on a (h, w) grid."""
    canvas = np.zeros(shape, dtype=bool)
    xy = np.rint(points).astype(int)
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < shape[0])
    canvas[xy[keep, 1], xy[keep, 0]] = True
    return canvas


def _densify(vertices: np.ndarray, step: float = 0.4) -> np.ndarray:
    """Points every `step` pixels (at most) along a polyline through `vertices` (N x 2)."""
    seg = np.diff(vertices, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    out = [vertices[:1]]
    for start, d, length in zip(vertices[:-1], seg, lengths, strict=True):
        m = max(1, int(np.ceil(length / step)))
        out.append(start + (np.arange(1, m + 1) / m)[:, None] * d)
    return np.concatenate(out)


def _stroke_alpha(line: np.ndarray, width: int) -> np.ndarray:
    """Soft-edged opacity of a 1-px line thickened to `width` pixels."""
    if width > 1:
        line = ndimage.binary_dilation(line, iterations=width - 1)
    soft = ndimage.gaussian_filter(line.astype(float), 0.6)
    alpha = np.clip(soft / 0.45, 0.0, 1.0)
    return np.where(alpha >= _MIN_ALPHA, alpha, 0.0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _crop(alpha: np.ndarray) -> np.ndarray:
    """`alpha` cropped to the box of its non-zero pixels."""
    x0, y0, x1, y1 = _bbox(alpha > 0)
    return alpha[y0:y1, x0:x1]


def _closer(
    alpha: np.ndarray, best: np.ndarray | None, target: int, cv: Canvas
) -> np.ndarray | None:
    """The better of two fitted shapes: in the size range and nearer the target side."""
    lo, hi = cv.defect_size or (0, 0)
    got = max(alpha.shape)
    if not lo <= got <= hi:
        return best
    if best is None or abs(got - target) < abs(max(best.shape) - target):
        return alpha
    return best


def _fit_stroke(
    lines: Sequence[np.ndarray], width: int, target: int, cv: Canvas
) -> tuple[np.ndarray] | None:
    """Polylines (vertex arrays in any unit) scaled together so the stroke's box has `target`
    px as its longer side; (opacity cropped to that box,) or None if no scale fits the range."""
    pts = np.concatenate(lines)
    origin = pts.min(axis=0)
    extent = max(float((pts.max(axis=0) - origin).max()), 1e-6)
    margin = width + 3
    pad = width + 1.0  # what the stroke adds to its centre line; refined from what is drawn
    best = None
    for _ in range(6):
        k = max(target - pad, 0.1) / extent
        side = int(np.ceil(extent * k)) + 2 * margin + 1
        line = np.zeros((side, side), dtype=bool)
        for vertices in lines:
            line |= _rasterize(_densify((vertices - origin) * k + margin), (side, side))
        alpha = _stroke_alpha(line, width)
        if not alpha.any():
            pad -= 1.0
            continue
        alpha = _crop(alpha)
        best = _closer(alpha, best, target, cv)
        if max(alpha.shape) == target:
            break
        pad += max(alpha.shape) - target
    return None if best is None else (best,)


def _sized(
    rng: np.random.Generator, cv: Canvas, make: Callable[[int], tuple[np.ndarray, ...] | None]
) -> tuple[np.ndarray, ...] | None:
    """`make(target)` for sizes drawn from `cv.defect_size` until one fits (8 tries)."""
    lo, hi = cv.defect_size or (0, 0)
    for _ in range(8):
        local = make(int(rng.integers(lo, hi + 1)))
        if local is not None:
            return local
    return None


def _place(
    rng: np.random.Generator, cv: Canvas, local: tuple[np.ndarray, ...] | None, n: int = 1
) -> list[np.ndarray]:
    """Arrays cropped to one defect's box, pasted at a uniformly random position wholly inside
    the image (zeros elsewhere); `n` arrays of zeros when nothing was fitted."""
    if local is None:
        return [np.zeros(cv.shape) for _ in range(n)]
    h, w = local[0].shape
    x0 = int(rng.integers(0, cv.width - w + 1))
    y0 = int(rng.integers(0, cv.height - h + 1))
    return [_paste(cv, arr, x0, y0) for arr in local]


def _paste(cv: Canvas, local: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """`local` at (x0, y0) in an image-sized array of zeros."""
    full = np.zeros(cv.shape)
    full[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
    return full


def _bowed_line(
    rng: np.random.Generator, centre: np.ndarray, length: float, angle: float
) -> np.ndarray:
    """25 vertices of a slightly bowed line (a scratch is dragged by a tool: smooth, never
    jagged)."""
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, 25)[:, None]
    bow = rng.uniform(-0.08, 0.08) * length * (1 - 4 * t**2)
    return centre + t * length * direction + bow * normal


def _scratch(rng: np.random.Generator, cv: Canvas) -> tuple[np.ndarray, float]:
    if cv.defect_size is None:
        length = rng.uniform(0.45, 0.9) * cv.scale
        angle = rng.uniform(0, np.pi)
        line = _bowed_line(rng, _spot(rng, cv, 0.2, 0.8), length, angle)
        alpha = _stroke_alpha(_rasterize(_densify(line), cv.shape), int(rng.integers(1, 3)))
    else:

        def make(target: int) -> tuple[np.ndarray] | None:
            line = _bowed_line(rng, np.zeros(2), 1.0, rng.uniform(0, np.pi))
            return _fit_stroke([line], int(rng.integers(1, 3)), target, cv)

        (alpha,) = _place(rng, cv, _sized(rng, cv, make))
    sign = 1.0 if rng.random() < 0.65 else -1.0  # mostly bright (exposed metal)
    return alpha, sign * rng.uniform(0.28, 0.4)


def _crack_lines(
    rng: np.random.Generator, scale: float, start: Callable[[], np.ndarray]
) -> list[np.ndarray]:
    """Vertices of a crack's trunk and its 1-3 side branches, lengths relative to `scale`."""

    def walk(start: np.ndarray, angle: float, length: float, jitter: float) -> np.ndarray:
        # Zig-zag around a slowly drifting heading: jagged like a fracture, but it keeps going
        # in one direction instead of curling up like a random walk.
        n = max(3, int(length / 3))
        drift = np.cumsum(rng.normal(0, 0.12, n))
        turns = angle + drift + rng.uniform(-jitter, jitter, n)
        steps = 3.0 * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        return np.concatenate([start[None], start + np.cumsum(steps, axis=0)])

    angle = rng.uniform(0, 2 * np.pi)
    trunk = walk(start(), angle, rng.uniform(0.35, 0.6) * scale, 0.7)
    lines = [trunk]
    for _ in range(int(rng.integers(1, 4))):
        at = trunk[int(rng.integers(len(trunk) // 4, len(trunk)))]
        side = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        lines.append(walk(at, side, rng.uniform(0.12, 0.3) * scale, 0.8))
    return lines


def _crack(rng: np.random.Generator, cv: Canvas) -> tuple[np.ndarray, float]:
    if cv.defect_size is None:
        line = np.zeros(cv.shape, dtype=bool)
        for vertices in _crack_lines(rng, cv.scale, lambda: _spot(rng, cv, 0.2, 0.8)):
            line |= _rasterize(_densify(vertices), cv.shape)
        alpha = _stroke_alpha(line, 1)
    else:
        # Drawn with the proportions of a crack on a 100 px square, then scaled to its size.
        def make(target: int) -> tuple[np.ndarray] | None:
            return _fit_stroke(_crack_lines(rng, 100.0, lambda: np.zeros(2)), 1, target, cv)

        (alpha,) = _place(rng, cv, _sized(rng, cv, make))
    return alpha, -rng.uniform(0.35, 0.5)


def _disk_alpha(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    d = np.hypot(xx - cx, yy - cy) / r
    # Darkest at the centre, fading towards the rim, but never below _MIN_ALPHA inside.
    return np.where(d <= 1.0, np.maximum(1.0 - 0.6 * d**2, _MIN_ALPHA), 0.0)


def _pits(
    rng: np.random.Generator, cv: Canvas, occupied: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """A cluster of 2-4 small round pits that touch neither each other nor `occupied`
    (updated in place), so every pit is one countable spot with its own box."""
    if cv.defect_size is not None:
        return _sized_pits(rng, cv, occupied)
    size = cv.scale
    out: list[tuple[np.ndarray, float]] = []
    centre = _spot(rng, cv, 0.2, 0.8)
    target = int(rng.integers(2, 5))
    for _ in range(40):  # rejection sampling; a cluster always fits in 40 tries at >= 32 px
        if len(out) == target:
            break
        r = rng.uniform(0.025, 0.045) * size
        cx, cy = centre + rng.normal(0, 0.07 * size, 2)
        if not (r < cx < cv.width - r and r < cy < cv.height - r):
            continue
        alpha = _disk_alpha(cv.shape, cx, cy, r)
        grown = ndimage.binary_dilation(alpha > 0, iterations=2)
        if (grown & occupied).any():
            continue
        occupied |= alpha > 0
        out.append((alpha, -rng.uniform(0.35, 0.5)))
    return out


def _sized_pits(
    rng: np.random.Generator, cv: Canvas, occupied: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """`_pits` with each pit's diameter (its box side, exactly) drawn from `cv.defect_size`;
    the cluster centre lies anywhere a largest pit fits, and the first try sits on it."""
    lo, hi = cv.defect_size or (0, 0)
    half = hi / 2 + 1
    centre = rng.uniform((half, half), (cv.width - half, cv.height - half))
    target = int(rng.integers(2, 5))
    out: list[tuple[np.ndarray, float]] = []
    for attempt in range(40):
        if len(out) == target:
            break
        d = int(rng.integers(lo, hi + 1))
        offset = rng.normal(0, 1.2 * hi, 2) if attempt else np.zeros(2)
        x0, y0 = (int(v) for v in np.floor(centre + offset - d / 2))
        if not (0 <= x0 <= cv.width - d and 0 <= y0 <= cv.height - d):
            continue
        # A d x d window with the centre on a pixel (odd d) or between four (even d), radius
        # just over (d - 1) / 2: the rasterised disk spans exactly d pixels each way.
        c = (d - 1) / 2
        alpha = _paste(cv, _disk_alpha((d, d), c, c, c + 0.25), x0, y0)
        if (ndimage.binary_dilation(alpha > 0, iterations=2) & occupied).any():
            continue
        occupied |= alpha > 0
        out.append((alpha, -rng.uniform(0.35, 0.5)))
    return out


def _ellipse(dx: np.ndarray, dy: np.ndarray, rx: float, ry: float, theta: float) -> np.ndarray:
    """1 - (normalised radius)^2 of an ellipse, for offsets (dx, dy) from its centre."""
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
    return 1.0 - (u**2 + v**2)


def _blob_alpha(field: np.ndarray) -> np.ndarray:
    """Opacity of the largest connected piece of `field > 0`, rising from the rim inwards."""
    blob = field > 0
    labels, n = ndimage.label(blob)
    if n > 1:  # keep the largest piece: one patch is one connected region
        sizes = ndimage.sum_labels(blob, labels, index=np.arange(1, n + 1))
        blob = labels == (1 + int(np.argmax(sizes)))
    depth = ndimage.distance_transform_edt(blob)
    return np.where(blob, np.clip(depth / 3.0, _MIN_ALPHA, 1.0), 0.0)


def _patch_delta(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A patch's brightness change: an offset plus its own rough texture."""
    sign = -1.0 if rng.random() < 0.7 else 1.0
    rough = 0.08 * _unit_noise(rng, shape, 0.8)
    delta = sign * rng.uniform(0.2, 0.3) + rough
    # The offset dominates the texture so every patch pixel changes by a visible amount.
    return np.where(np.abs(delta) < 0.1, sign * 0.1, delta)


def _patch(rng: np.random.Generator, cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob; returns (alpha, delta map): patches carry their own texture."""
    if cv.defect_size is not None:
        alpha, delta = _place(rng, cv, _sized(rng, cv, lambda t: _fit_blob(rng, t, cv)), n=2)
        return alpha, delta
    size = cv.scale
    yy, xx = np.mgrid[0 : cv.height, 0 : cv.width].astype(float)
    cx, cy = _spot(rng, cv, 0.25, 0.75)
    rx, ry = rng.uniform(0.1, 0.22, size=2) * size
    theta = rng.uniform(0, np.pi)
    field = _ellipse(xx - cx, yy - cy, rx, ry, theta) + 0.45 * _noise_fn(cv)(
        rng, cv.shape, size / 25
    )
    return _blob_alpha(field), _patch_delta(rng, cv.shape)


def _fit_blob(
    rng: np.random.Generator, target: int, cv: Canvas
) -> tuple[np.ndarray, np.ndarray] | None:
    """A patch whose box has `target` px as its longer side: (alpha, delta) cropped to the
    box, or None if no radius lands in the size range."""
    side = 3 * target + 8
    yy, xx = np.mgrid[0:side, 0:side].astype(float) - (side - 1) / 2
    ratio = rng.uniform(0.45, 1.0)  # minor / major axis
    theta = rng.uniform(0, np.pi)
    noise = 0.45 * _unit_noise(rng, (side, side), max(1.0, target / 6))
    radius = target / 2
    best = None
    for _ in range(6):
        alpha = _blob_alpha(_ellipse(xx, yy, radius, radius * ratio, theta) + noise)
        if not alpha.any():
            radius *= 1.5
            continue
        alpha = _crop(alpha)
        best = _closer(alpha, best, target, cv)
        if max(alpha.shape) == target:
            break
        radius *= target / max(alpha.shape)
    return None if best is None else (best, _patch_delta(rng, best.shape))


def _defects(cls: str, rng: np.random.Generator, cv: Canvas) -> list[tuple[np.ndarray, object]]:
    if cls == "scratch":
        return [_scratch(rng, cv) for _ in range(int(rng.integers(1, 4)))]
    if cls == "crack":
        return [_crack(rng, cv) for _ in range(int(rng.integers(1, 3)))]
    if cls == "pit":
        occupied = np.zeros(cv.shape, dtype=bool)
        return [p for _ in range(int(rng.integers(1, 3))) for p in _pits(rng, cv, occupied)]
    if cls == "patch":
        return _patches(rng, cv)
    if cls == CLEAN:
        return []
    raise DataError(f"unknown synthetic class {cls!r}; choose from {', '.join(DEFAULT_CLASSES)}")


def _patches(rng: np.random.Generator, cv: Canvas) -> list[tuple[np.ndarray, np.ndarray]]:
    """1-2 patches that do not touch: two merged blobs would read as one patch while the text
    counts two. (Scratches and cracks may cross, as real ones do.)"""
    target = int(rng.integers(1, 3))
    taken = np.zeros(cv.shape, dtype=bool)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(12):  # rejection sampling; the first patch always fits
        if len(out) == target:
            break
        alpha, delta = _patch(rng, cv)
        drawn = alpha > 0
        if (ndimage.binary_dilation(drawn, iterations=2) & taken).any():
            continue
        taken |= drawn
        out.append((alpha, delta))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def render_sample(cls: str, canvas: Canvas | int, rng: np.random.Generator) -> SyntheticSample:
    """Render one image of class `cls` (a defect class or "clean") on `canvas` (an int: a
    square of that side with relative defect sizes).

    Defects are composited one after another (later ones on top); a defect that ends up
    entirely hidden or outside the image gets no box. The mask is exactly the set of pixels
    whose opacity is non-zero, and the image equals `background` everywhere else.
    """
    cv = canvas if isinstance(canvas, Canvas) else Canvas(int(canvas), int(canvas))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    background = _surface(rng, cv, texture)
    image = background.copy()
    mask = np.zeros(cv.shape, dtype=bool)
    boxes: list[tuple[int, int, int, int, str]] = []
    for alpha, delta in _defects(cls, rng, cv):
        drawn = alpha > 0
        if not drawn.any():
            continue
        image = image + alpha * delta
        mask |= drawn
        boxes.append((*_bbox(drawn), cls))
    img8 = _to_uint8(image)
    bg8 = _to_uint8(background)
    # Rounding could in principle leave a masked pixel unchanged (clipped at 0 or 255); the
    # mask must describe pixels that really differ, so such pixels get nudged by one level.
    same = mask & (img8 == bg8)
    if same.any():
        img8[same] = np.where(bg8[same] > 127, bg8[same] - 1, bg8[same] + 1)
    return SyntheticSample(img8, bg8, (mask * 255).astype(np.uint8), boxes, cls, texture)


# ----------------------------------------------------------------------------------------------
# Geometry options


def parse_aspects(value: str | Sequence[float | str] | None) -> tuple[float, ...] | None:
    """Aspect ratios (width / height) from ``"1,8:3,2.5"`` or a sequence of numbers or
    ``"W:H"`` strings; None stays None.

    Raises:
        DataError: an entry that is not a positive ratio between 1/16 and 16.
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[float] = []
    for item in items:
        text = str(item).strip()
        try:
            if ":" in text:
                w, h = text.split(":")
                ratio = float(Fraction(w.strip()) / Fraction(h.strip()))
            else:
                ratio = float(text)
        except (ValueError, ZeroDivisionError):
            ratio = float("nan")
        if not 1.0 / _MAX_ASPECT <= ratio <= _MAX_ASPECT:  # also catches nan
            raise DataError(
                f"synthetic: aspect {text!r} is not a width/height ratio between 1/16 and 16; "
                "write it as a number (2.5) or as W:H (8:3), entries separated by commas"
            )
        out.append(ratio)
    return tuple(out)


def parse_defect_size(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """Defect size range in pixels from ``"8-24"``, ``"16"``, 16 or (8, 24); None stays None.

    Raises:
        DataError: not one or two whole numbers, lo > hi, or lo below 4 px.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts: list = value.replace(" ", "").split("-")
    elif isinstance(value, int | np.integer):
        parts = [value]
    else:
        parts = list(value)
    try:
        nums = [int(str(p).strip()) for p in parts]
    except ValueError:
        nums = []
    nums = nums * 2 if len(nums) == 1 else nums
    if len(nums) != 2 or nums[0] > nums[1] or nums[0] < _MIN_DEFECT:
        raise DataError(
            f"synthetic: defect size {value!r} must be PIXELS or LO-HI (whole pixels, "
            f"LO <= HI, at least {_MIN_DEFECT}), e.g. 8-24"
        )
    return nums[0], nums[1]


def _check_geometry(
    size: int | None,
    width: int | None,
    height: int | None,
    aspects: tuple[float, ...] | None,
) -> int:
    """Reject conflicting or out-of-range sizes; returns the square / shorter side to use."""
    if (width is None) != (height is None):
        raise DataError(
            "synthetic: give width and height together (e.g. --width 1024 --height 384)"
        )
    if width is not None and (size is not None or aspects is not None):
        raise DataError(
            "synthetic: width and height fix every image's size; leave out size and aspects "
            "(or use size with aspects for a mix of shapes)"
        )
    sides = [width, height] if width is not None else [DEFAULT_SIZE if size is None else size]
    for side in sides:
        if side < _MIN_SIZE:
            raise DataError(f"synthetic: image sides must be at least {_MIN_SIZE} px, got {side}")
    longest = max(sides) * max([1.0, *(aspects or ()), *(1 / a for a in aspects or ())])
    if longest > _MAX_SIDE:
        raise DataError(
            f"synthetic: images would be {longest:.0f} px long; the limit is {_MAX_SIDE}"
        )
    return sides[0]


def _canvases(
    labels: Sequence[str],
    size: int,
    dims: tuple[int, int] | None,
    aspects: tuple[float, ...] | None,
    defect_size: tuple[int, int] | None,
) -> list[Canvas]:
    """One canvas per image: fixed `dims`, squares of `size`, or `aspects` in turn per class."""
    if dims is not None:
        canvases = [Canvas(dims[0], dims[1], defect_size) for _ in labels]
    elif aspects is None:
        canvases = [Canvas(size, size, defect_size) for _ in labels]
    else:
        # Class j's k-th image takes entry (j + k) mod len: every class gets the same mix (counts
        # differ by at most one), and in tiny sets the classes do not all start on entry 0.
        first = {cls: j for j, cls in enumerate(dict.fromkeys(sorted(labels)))}
        seen: Counter[str] = Counter()
        canvases = []
        for cls in labels:
            a = aspects[(first[cls] + seen[cls]) % len(aspects)]
            seen[cls] += 1
            w, h = (round(size * a), size) if a >= 1 else (size, round(size / a))
            canvases.append(Canvas(w, h, defect_size))
    if defect_size is not None:
        fit = min(c.scale for c in canvases) - 2
        if defect_size[1] > fit:
            raise DataError(
                f"synthetic: defects up to {defect_size[1]} px do not fit in images whose "
                f"shorter side is {fit + 2} px; use a defect size of at most {fit}"
            )
    return canvases


def describe_geometry(canvases: Sequence[Canvas]) -> str:
    """E.g. "128 px", "1024x384 px", "128x128 px (200), 256x128 px (40); defects 8-24 px"."""
    counts = Counter((c.width, c.height) for c in canvases)
    if len(counts) == 1:
        ((w, h),) = counts
        text = f"{w} px" if w == h else f"{w}x{h} px"
    else:
        ordered = sorted(counts.items(), key=lambda item: (item[0][0] * item[0][1], item[0]))
        text = ", ".join(f"{w}x{h} px ({k})" for (w, h), k in ordered)
    sized = canvases[0].defect_size if canvases else None
    return text + (f", defects {sized[0]}-{sized[1]} px" if sized else "")


# ----------------------------------------------------------------------------------------------
# Data set


def balanced_classes(n: int, classes: Sequence[str], seed: int) -> list[str]:
    """`n` class names with counts differing by at most one, in a seeded random order."""
    order = [classes[i % len(classes)] for i in range(n)]
    np.random.default_rng([seed, 0xC1A55]).shuffle(order)
    return order


def _text(sample: SyntheticSample) -> str:
    if not sample.boxes:
        return CLEAN_TEXT
    height, width = sample.image.shape
    boxes = [b[:4] for b in sample.boxes]
    return describe_boxes(sample.label, boxes, width, height, surface=SURFACE)


def _check_args(n: int, classes: Sequence[str]) -> None:
    if n < 1:
        raise DataError(f"synthetic: n must be at least 1, got {n}")
    unknown = [c for c in classes if c not in DEFAULT_CLASSES]
    if unknown or not classes:
        raise DataError(
            f"synthetic: unknown or no classes {unknown or list(classes)}; "
            f"choose from {', '.join(DEFAULT_CLASSES)}"
        )
    if len(set(classes)) != len(classes):
        raise DataError(f"synthetic: classes listed twice: {list(classes)}")


def plan_canvases(
    n: int,
    classes: Sequence[str],
    seed: int,
    *,
    size: int | None = None,
    width: int | None = None,
    height: int | None = None,
    aspects: str | Sequence[float | str] | None = None,
    defect_size: str | int | Sequence[int] | None = None,
) -> list[tuple[str, Canvas]]:
    """The class and canvas of every image, checked (see `generate_synthetic` for the options).

    Raises:
        DataError: unknown classes, n < 1, or sizes that conflict or are out of range.
    """
    classes = tuple(classes)
    _check_args(n, classes)
    ratios = parse_aspects(aspects)
    side = _check_geometry(size, width, height, ratios)
    dims = None if width is None or height is None else (width, height)
    labels = balanced_classes(n, classes, seed)
    canvases = _canvases(labels, side, dims, ratios, parse_defect_size(defect_size))
    return list(zip(labels, canvases, strict=True))


def _row(sample: SyntheticSample, i: int, name: str, digits: int) -> ManifestRow:
    height, width = sample.image.shape
    return ManifestRow(
        image=f"images/{name}",
        text=_text(sample),
        label=[sample.label],
        group=f"synthetic-{i:0{digits}d}",
        meta={
            "boxes": json.dumps([list(b) for b in sample.boxes]),
            "mask": f"masks/{name}",
            "width": str(width),
            "height": str(height),
            "texture": sample.texture,
            "text_source": "describe_boxes" if sample.boxes else "clean_template",
        },
    )


def generate_rows(
    out: Path,
    n: int = 240,
    size: int | None = None,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    width: int | None = None,
    height: int | None = None,
    aspects: str | Sequence[float | str] | None = None,
    defect_size: str | int | Sequence[int] | None = None,
) -> list[ManifestRow]:
    """Write `n` images and masks under `out`/images and `out`/masks; return unsplit rows.

    Options as in `generate_synthetic`. Image paths in the rows are relative to `out`. Existing
    files with the same names are overwritten (a re-run with the same arguments reproduces
    them byte for byte).
    """
    plan = plan_canvases(
        n,
        classes,
        seed,
        size=size,
        width=width,
        height=height,
        aspects=aspects,
        defect_size=defect_size,
    )
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[ManifestRow] = []
    digits = max(4, len(str(n - 1)))
    for i, (cls, canvas) in enumerate(plan):
        sample = render_sample(cls, canvas, np.random.default_rng([seed, i]))
        name = f"{i:0{digits}d}.png"
        Image.fromarray(sample.image).save(out / "images" / name)
        Image.fromarray(sample.mask).save(out / "masks" / name)
        rows.append(_row(sample, i, name, digits))
    elapsed = time.perf_counter() - start
    logger.info(
        "synthetic: %d images of %s in %.2f s (%.1f ms/image); classes %s",
        n,
        describe_geometry([c for _, c in plan]),
        elapsed,
        1000 * elapsed / n,
        dict(Counter(r.label[0] for r in rows)),
    )
    return rows


def generate_synthetic(
    out: Path,
    n: int = 240,
    size: int | None = None,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    width: int | None = None,
    height: int | None = None,
    aspects: str | Sequence[float | str] | None = None,
    defect_size: str | int | Sequence[int] | None = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
) -> ImportResult:
    """Generate the synthetic defect data set into `out` and write ``out/manifest.csv``.

    Args:
        out: output folder (images/, masks/ and manifest.csv are created in it).
        n: number of images; classes are balanced (counts differ by at most one).
        size: image side in pixels (square, grayscale PNG; default 128), at least 32; with
            `aspects`, the shorter side of every image.
        seed: the same seed gives byte-identical images, masks and manifest.
        classes: any of "scratch", "pit", "crack", "patch", "clean" (defect-free).
        width, height: every image `width` x `height` px (both, each at least 32; not with
            `size` or `aspects`), e.g. 1024 x 384.
        aspects: width/height ratios, e.g. "1,8:3" or (1, 2): each image takes one entry, in
            turn within every class, so every class has the same mix of shapes; repeat an
            entry to weight it ("1,1,1,2": a quarter of the images 2:1). Portrait below 1.
        defect_size: "LO-HI" or (lo, hi) pixels (lo >= 4): the longer side of every defect's
            box, drawn uniformly, independent of the image size; boxes then lie anywhere in the
            image. Default: sizes relative to the shorter side.
        val_frac, test_frac: split fractions (every image is its own group).

    Raises:
        DataError: unknown classes, n < 1, sizes below 32 px, conflicting size options, bad
            aspects or defect sizes (or defects that do not fit the images).
    """
    rows = generate_rows(
        out,
        n=n,
        size=size,
        seed=seed,
        classes=classes,
        width=width,
        height=height,
        aspects=aspects,
        defect_size=defect_size,
    )
    geometry = describe_geometry(
        [
            Canvas(int(r.meta["width"]), int(r.meta["height"]), parse_defect_size(defect_size))
            for r in rows
        ]
    )
    notes = [
        f"synthetic metal surfaces, {geometry}, seed {seed}: texts come from the drawn boxes, "
        "masks mark exactly the changed pixels",
    ]
    return finish_import(
        rows,
        Path(out),
        kind="synthetic",
        src=None,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        calib_frac=calib_frac,
        tally=Tally(),
        notes=notes,
    )
