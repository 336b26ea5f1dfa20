"""Seeded procedural generator of metal-surface defect images with texts, boxes and masks.

This is the built-in data set of `domainclip demo`: it needs no download and no ../shared.
Each image shows a grey metal surface (brushed: directional streaks; cast: blotchy
low-frequency texture; random brightness, contrast and shading) with defects of ONE class:

* ``scratch``: 1-3 thin, long, slightly curved lines, bright or dark, smooth.
* ``pit``: 1-2 clusters of 2-4 small dark round spots (each spot is one box).
* ``crack``: 1-2 jagged dark lines with 1-3 side branches.
* ``patch``: 1-2 irregular blobs with a different brightness and a rougher texture.
* ``clean``: no defect ("a clean metal surface with no visible defects").

Masks are exact: a mask pixel is 255 exactly where a defect changed the image, and every pixel
outside the mask equals the defect-free background (`render_sample` returns both, so tests can
check it). Boxes are ``[xmin, ymin, xmax, ymax, class]`` with exclusive xmax/ymax, one per
defect instance, as in the NEU-DET importer. Texts come from `describe_boxes` and therefore
state the true count, size and position.

Every image is drawn from its own generator seeded with ``(seed, index)``, so the same seed
gives byte-identical files, and image i does not depend on n.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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

_MIN_ALPHA = 0.35  # every mask pixel gets at least this opacity, so it visibly changes
_MIN_SIZE = 32  # below this defects cannot be told apart


@dataclass
class SyntheticSample:
    """One rendered image: uint8 arrays of shape (size, size) and the defect boxes."""

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


def _surface(rng: np.random.Generator, size: int, texture: str) -> np.ndarray:
    """A defect-free surface in [0, 1] (float64)."""
    shape = (size, size)
    base = rng.uniform(0.35, 0.65)
    if texture == "brushed":
        # Grinding/brushing leaves streaks along one direction: noise smoothed much more along it.
        streaks = _unit_noise(rng, shape, (0.6, size / 10))
        if rng.random() < 0.5:
            streaks = streaks.T
        tex = rng.uniform(0.03, 0.06) * streaks + 0.015 * _unit_noise(rng, shape, size / 6)
    else:  # cast: blotchy low-frequency variation plus fine grain
        tex = rng.uniform(0.03, 0.06) * _unit_noise(rng, shape, size / 12)
        tex += rng.uniform(0.015, 0.03) * _unit_noise(rng, shape, 1.2)
    # Uneven illumination: a gentle linear gradient in a random direction.
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(0.0, 0.12) * (np.cos(angle) * xx + np.sin(angle) * yy)
    grain = rng.uniform(0.005, 0.015) * rng.standard_normal(shape)
    return np.clip(base + tex + shading + grain, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Defect shapes: each returns (alpha, delta) where alpha is 0 outside the defect and at least
# _MIN_ALPHA inside, and delta is the brightness change at full opacity.


def _rasterize(points: np.ndarray, size: int) -> np.ndarray:
    """Mark the pixels under a dense polyline (points as float (x, y) rows)."""
    canvas = np.zeros((size, size), dtype=bool)
    xy = np.rint(points).astype(int)
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
    canvas[xy[keep, 1], xy[keep, 0]] = True
    return canvas


def _densify(vertices: np.ndarray, step: float = 0.4) -> np.ndarray:
    """Points every `step` pixels along a polyline through `vertices` (N x 2)."""
    seg = np.diff(vertices, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    out = [vertices[:1]]
    for start, d, length in zip(vertices[:-1], seg, lengths, strict=True):
        t = np.arange(1, max(2, int(np.ceil(length / step))) + 1) / max(
            1, int(np.ceil(length / step))
        )
        out.append(start + t[:, None] * d)
    return np.concatenate(out)


def _stroke_alpha(line: np.ndarray, width: int) -> np.ndarray:
    """Soft-edged opacity of a 1-px line thickened to `width` pixels."""
    if width > 1:
        line = ndimage.binary_dilation(line, iterations=width - 1)
    soft = ndimage.gaussian_filter(line.astype(float), 0.6)
    alpha = np.clip(soft / 0.45, 0.0, 1.0)
    return np.where(alpha >= _MIN_ALPHA, alpha, 0.0)


def _scratch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    length = rng.uniform(0.45, 0.9) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    centre = rng.uniform(0.2, 0.8, size=2) * size
    t = np.linspace(-0.5, 0.5, 25)[:, None]
    # Slight bow: a scratch is dragged by a tool, so it is smooth, never jagged.
    bow = rng.uniform(-0.08, 0.08) * length * (1 - 4 * t**2)
    vertices = centre + t * length * direction + bow * normal
    alpha = _stroke_alpha(_rasterize(_densify(vertices), size), int(rng.integers(1, 3)))
    sign = 1.0 if rng.random() < 0.65 else -1.0  # mostly bright (exposed metal)
    return alpha, sign * rng.uniform(0.28, 0.4)


def _crack(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    def walk(start: np.ndarray, angle: float, length: float, jitter: float) -> np.ndarray:
        # Zig-zag around a slowly drifting heading: jagged like a fracture, but it keeps going
        # in one direction instead of curling up like a random walk.
        n = max(3, int(length / 3))
        drift = np.cumsum(rng.normal(0, 0.12, n))
        turns = angle + drift + rng.uniform(-jitter, jitter, n)
        steps = 3.0 * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        return np.concatenate([start[None], start + np.cumsum(steps, axis=0)])

    angle = rng.uniform(0, 2 * np.pi)
    trunk = walk(rng.uniform(0.2, 0.8, size=2) * size, angle, rng.uniform(0.35, 0.6) * size, 0.7)
    line = _rasterize(_densify(trunk), size)
    for _ in range(int(rng.integers(1, 4))):
        at = trunk[int(rng.integers(len(trunk) // 4, len(trunk)))]
        side = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        branch = walk(at, side, rng.uniform(0.12, 0.3) * size, 0.8)
        line |= _rasterize(_densify(branch), size)
    alpha = _stroke_alpha(line, 1)
    return alpha, -rng.uniform(0.35, 0.5)


def _disk_alpha(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.hypot(xx - cx, yy - cy) / r
    # Darkest at the centre, fading towards the rim, but never below _MIN_ALPHA inside.
    return np.where(d <= 1.0, np.maximum(1.0 - 0.6 * d**2, _MIN_ALPHA), 0.0)


def _pits(
    rng: np.random.Generator, size: int, occupied: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """A cluster of 2-4 small round pits that touch neither each other nor `occupied`
    (updated in place), so every pit is one countable spot with its own box."""
    out: list[tuple[np.ndarray, float]] = []
    centre = rng.uniform(0.2, 0.8, size=2) * size
    target = int(rng.integers(2, 5))
    for _ in range(40):  # rejection sampling; a cluster always fits in 40 tries at >= 32 px
        if len(out) == target:
            break
        r = rng.uniform(0.025, 0.045) * size
        cx, cy = centre + rng.normal(0, 0.07 * size, 2)
        if not (r < cx < size - r and r < cy < size - r):
            continue
        alpha = _disk_alpha(size, cx, cy, r)
        grown = ndimage.binary_dilation(alpha > 0, iterations=2)
        if (grown & occupied).any():
            continue
        occupied |= alpha > 0
        out.append((alpha, -rng.uniform(0.35, 0.5)))
    return out


def _patch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob; returns (alpha, delta map): patches carry their own texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    rx, ry = rng.uniform(0.1, 0.22, size=2) * size
    theta = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / rx
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ry
    field = 1.0 - (u**2 + v**2) + 0.45 * _unit_noise(rng, (size, size), size / 25)
    blob = field > 0
    labels, n = ndimage.label(blob)
    if n > 1:  # keep the largest piece: one patch is one connected region
        sizes = ndimage.sum_labels(blob, labels, index=np.arange(1, n + 1))
        blob = labels == (1 + int(np.argmax(sizes)))
    depth = ndimage.distance_transform_edt(blob)
    alpha = np.where(blob, np.clip(depth / 3.0, _MIN_ALPHA, 1.0), 0.0)
    sign = -1.0 if rng.random() < 0.7 else 1.0
    rough = 0.08 * _unit_noise(rng, (size, size), 0.8)
    delta = sign * rng.uniform(0.2, 0.3) + rough
    # The offset dominates the texture so every patch pixel changes by a visible amount.
    delta = np.where(np.abs(delta) < 0.1, sign * 0.1, delta)
    return alpha, delta


def _defects(cls: str, rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, object]]:
    if cls == "scratch":
        return [_scratch(rng, size) for _ in range(int(rng.integers(1, 4)))]
    if cls == "crack":
        return [_crack(rng, size) for _ in range(int(rng.integers(1, 3)))]
    if cls == "pit":
        occupied = np.zeros((size, size), dtype=bool)
        return [p for _ in range(int(rng.integers(1, 3))) for p in _pits(rng, size, occupied)]
    if cls == "patch":
        return _patches(rng, size)
    if cls == CLEAN:
        return []
    raise DataError(f"unknown synthetic class {cls!r}; choose from {', '.join(DEFAULT_CLASSES)}")


def _patches(rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """1-2 patches that do not touch: two merged blobs would read as one patch while the text
    counts two. (Scratches and cracks may cross, as real ones do.)"""
    target = int(rng.integers(1, 3))
    taken = np.zeros((size, size), dtype=bool)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(12):  # rejection sampling; the first patch always fits
        if len(out) == target:
            break
        alpha, delta = _patch(rng, size)
        drawn = alpha > 0
        if (ndimage.binary_dilation(drawn, iterations=2) & taken).any():
            continue
        taken |= drawn
        out.append((alpha, delta))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def render_sample(cls: str, size: int, rng: np.random.Generator) -> SyntheticSample:
    """Render one image of class `cls` (a defect class or "clean").

    Defects are composited one after another (later ones on top); a defect that ends up
    entirely hidden or outside the image gets no box. The mask is exactly the set of pixels
    whose opacity is non-zero, and the image equals `background` everywhere else.
    """
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    background = _surface(rng, size, texture)
    image = background.copy()
    mask = np.zeros((size, size), dtype=bool)
    boxes: list[tuple[int, int, int, int, str]] = []
    for alpha, delta in _defects(cls, rng, size):
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
# Data set


def balanced_classes(n: int, classes: Sequence[str], seed: int) -> list[str]:
    """`n` class names with counts differing by at most one, in a seeded random order."""
    order = [classes[i % len(classes)] for i in range(n)]
    np.random.default_rng([seed, 0xC1A55]).shuffle(order)
    return order


def _text(sample: SyntheticSample, size: int) -> str:
    if not sample.boxes:
        return CLEAN_TEXT
    return describe_boxes(sample.label, [b[:4] for b in sample.boxes], size, size, surface=SURFACE)


def _check_args(n: int, size: int, classes: Sequence[str]) -> None:
    if n < 1:
        raise DataError(f"synthetic: n must be at least 1, got {n}")
    if size < _MIN_SIZE:
        raise DataError(f"synthetic: size must be at least {_MIN_SIZE} px, got {size}")
    unknown = [c for c in classes if c not in DEFAULT_CLASSES]
    if unknown or not classes:
        raise DataError(
            f"synthetic: unknown or no classes {unknown or list(classes)}; "
            f"choose from {', '.join(DEFAULT_CLASSES)}"
        )
    if len(set(classes)) != len(classes):
        raise DataError(f"synthetic: classes listed twice: {list(classes)}")


def generate_rows(
    out: Path,
    n: int = 240,
    size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> list[ManifestRow]:
    """Write `n` images and masks under `out`/images and `out`/masks; return unsplit rows.

    Image paths in the rows are relative to `out`. Existing files with the same names are
    overwritten (a re-run with the same arguments reproduces them byte for byte).
    """
    classes = tuple(classes)
    _check_args(n, size, classes)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[ManifestRow] = []
    width = max(4, len(str(n - 1)))
    for i, cls in enumerate(balanced_classes(n, classes, seed)):
        sample = render_sample(cls, size, np.random.default_rng([seed, i]))
        name = f"{i:0{width}d}.png"
        Image.fromarray(sample.image).save(out / "images" / name)
        Image.fromarray(sample.mask).save(out / "masks" / name)
        rows.append(
            ManifestRow(
                image=f"images/{name}",
                text=_text(sample, size),
                label=[cls],
                group=f"synthetic-{i:0{width}d}",
                meta={
                    "boxes": json.dumps([list(b) for b in sample.boxes]),
                    "mask": f"masks/{name}",
                    "width": str(size),
                    "height": str(size),
                    "texture": sample.texture,
                    "text_source": "describe_boxes" if sample.boxes else "clean_template",
                },
            )
        )
    elapsed = time.perf_counter() - start
    logger.info(
        "synthetic: %d images of %d px in %.2f s (%.1f ms/image); classes %s",
        n,
        size,
        elapsed,
        1000 * elapsed / n,
        dict(Counter(r.label[0] for r in rows)),
    )
    return rows


def generate_synthetic(
    out: Path,
    n: int = 240,
    size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
) -> ImportResult:
    """Generate the synthetic defect data set into `out` and write ``out/manifest.csv``.

    Args:
        out: output folder (images/, masks/ and manifest.csv are created in it).
        n: number of images; classes are balanced (counts differ by at most one).
        size: image side in pixels (square, grayscale PNG), at least 32.
        seed: the same seed gives byte-identical images, masks and manifest.
        classes: any of "scratch", "pit", "crack", "patch", "clean" (defect-free).
        val_frac, test_frac: split fractions (every image is its own group).

    Raises:
        DataError: unknown classes, n < 1 or size < 32.
    """
    rows = generate_rows(out, n=n, size=size, seed=seed, classes=classes)
    notes = [
        f"synthetic metal surfaces, {size} px, seed {seed}: texts come from the drawn boxes, "
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
        tally=Tally(),
        notes=notes,
    )
