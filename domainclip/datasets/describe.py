"""Honest, position-aware descriptions of defects from a class name and bounding boxes.

The texts say only what the annotation supports: how many boxes there are, how large they
are relative to the image, whether line-like defects are long, and where their centres lie on
a 3x3 grid. For example::

    >>> describe_boxes("scratches", [(10, 5, 20, 90), (30, 8, 40, 95)], 200, 200)
    'two long scratches in the upper left of a steel surface'

Everything is deterministic (no random phrasing), so a manifest re-imported from the same
annotations is byte-identical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from domainclip.templates import humanise

Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax in pixels


@dataclass(frozen=True)
class _Noun:
    """How a class is written: singular/plural for countable defects, or a mass noun."""

    singular: str
    plural: str
    mass: bool = False  # "fine crazing" is not counted; boxes become "areas of fine crazing"
    line_like: bool = False  # size is described by length ("long"), not area


# NEU-DET classes (hot-rolled steel), the synthetic generator's classes and a few MVTec-AD
# mass nouns. Fixed at import.
_NOUNS: dict[str, _Noun] = {
    "crazing": _Noun("fine crazing", "fine crazing", mass=True),
    "inclusion": _Noun("inclusion", "inclusions"),
    "patches": _Noun("patch", "patches"),
    "patch": _Noun("patch", "patches"),
    "pitted_surface": _Noun("pitted area", "pitted areas"),
    "rolled-in_scale": _Noun("rolled-in scale", "rolled-in scale", mass=True),
    "scratches": _Noun("scratch", "scratches", line_like=True),
    "scratch": _Noun("scratch", "scratches", line_like=True),
    "pit": _Noun("pit", "pits"),
    "pits": _Noun("pit", "pits"),
    "crack": _Noun("crack", "cracks", line_like=True),
    "cracks": _Noun("crack", "cracks", line_like=True),
    # Mass nouns of MVTec-AD-style defect folders (`importers/mvtec.py` words them this way).
    "contamination": _Noun("contamination", "contamination", mass=True),
    "metal contamination": _Noun("metal contamination", "metal contamination", mass=True),
    "glue": _Noun("glue", "glue", mass=True),
    "oil": _Noun("oil", "oil", mass=True),
    "liquid": _Noun("liquid", "liquid", mass=True),
    # DeepPCB printed-circuit-board defects (importers/deeppcb.py names them so).
    "open": _Noun("open circuit", "open circuits"),
    "short": _Noun("short circuit", "short circuits"),
    "mousebite": _Noun("mouse bite", "mouse bites"),
    "spur": _Noun("spur", "spurs"),
    "spurious_copper": _Noun("spurious copper", "spurious copper", mass=True),
    "pin_hole": _Noun("pin hole", "pin holes"),
}

_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Area fraction thresholds for size words (fraction of the image covered by one box).
_SMALL_MAX = 0.03
_MEDIUM_MAX = 0.12
_COVER_MOST = 0.6  # union of boxes covering at least this share -> "covering most of"
# Line-like defects: length of the box's longer side relative to the image side.
_LONG_MIN = 0.4
_ELONGATED = 3.0  # aspect ratio from which a line-like box is clearly a line
_SPAN = 2.0 / 3.0  # a box spanning this much of the width/height covers a whole grid row/column

_SIZE_RANK = ("short", "small", "medium", "large", "long")

# 3x3 grid cell (col, row) -> (preposition, name). "at the top centre of", "on the left side of".
_CELL_NAMES: dict[tuple[int, int], tuple[str, str]] = {
    (0, 0): ("in the", "upper left"),
    (1, 0): ("at the", "top centre"),
    (2, 0): ("in the", "upper right"),
    (0, 1): ("on the", "left side"),
    (1, 1): ("in the", "centre"),
    (2, 1): ("on the", "right side"),
    (0, 2): ("in the", "lower left"),
    (1, 2): ("at the", "bottom centre"),
    (2, 2): ("in the", "lower right"),
}
# (standalone, before the surface): the standalone form is used for every class but the last one
# in a multi-class sentence ("two patches on the left side and an inclusion in the centre of").
_ROW_PHRASES = ("along the top", "across the middle", "along the bottom")
_COL_PHRASES = ("down the left side", "down the centre", "down the right side")


@dataclass(frozen=True)
class _Where:
    """A location phrase, standalone ("spread around") and before the surface ("spread across")."""

    alone: str
    before_surface: str

    @classmethod
    def of(cls, phrase: str) -> _Where:
        return cls(phrase, phrase + " of")


def noun_for(class_name: str) -> _Noun:
    """Readable noun for a class; unknown classes use their name as words (`humanise`)."""
    key = class_name.strip().lower()
    if key in _NOUNS:
        return _NOUNS[key]
    word = humanise(key)
    return _Noun(word, word if word.endswith("s") else word + "s")


def count_word(n: int) -> str:
    """'one'..'nine' for small counts, 'many' from ten on."""
    return _COUNT_WORDS[n] if 0 <= n < len(_COUNT_WORDS) else "many"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _grid_cell(cx: float, cy: float, w: int, h: int) -> tuple[int, int]:
    col = min(2, max(0, int(3 * cx / w)))
    row = min(2, max(0, int(3 * cy / h)))
    return col, row


def position_phrase(cx: float, cy: float, w: int, h: int) -> str:
    """Name of the 3x3 grid cell containing the point (cx, cy) in a w x h image.

    Returns one of "upper left", "top centre", "upper right", "left side", "centre",
    "right side", "lower left", "bottom centre", "lower right".
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    return _CELL_NAMES[_grid_cell(cx, cy, w, h)][1]


def _box_cells(box: Box, w: int, h: int) -> set[tuple[int, int]]:
    """Grid cells a box occupies: its centre's cell, widened to a whole row/column when it spans."""
    x0, y0, x1, y1 = box
    col, row = _grid_cell((x0 + x1) / 2, (y0 + y1) / 2, w, h)
    cols = {0, 1, 2} if (x1 - x0) >= _SPAN * w else {col}
    rows = {0, 1, 2} if (y1 - y0) >= _SPAN * h else {row}
    return {(c, r) for c in cols for r in rows}


def _union_fraction(boxes: Sequence[Box], w: int, h: int) -> float:
    occupied = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        occupied[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return float(occupied.mean())


def _size_word(box: Box, w: int, h: int, noun: _Noun) -> str:
    bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    if noun.line_like:
        major = max(bw / w, bh / h)
        if major >= _LONG_MIN:
            return "long"
        if max(bw, bh) / min(bw, bh) >= _ELONGATED:
            return "short"
    frac = (bw * bh) / (w * h)
    if frac < _SMALL_MAX:
        return "small"
    if frac < _MEDIUM_MAX:
        return "medium"
    return "large"


def _where(boxes: Sequence[Box], w: int, h: int, noun: _Noun) -> _Where:
    """Where the boxes are, from their grid cells (and union area for non-line defects)."""
    if not noun.line_like and _union_fraction(boxes, w, h) >= _COVER_MOST:
        return _Where("covering most of the surface", "covering most of")
    cells: set[tuple[int, int]] = set()
    for b in boxes:
        cells |= _box_cells(b, w, h)
    rows = {r for _, r in cells}
    cols = {c for c, _ in cells}
    if len(cells) == 1:
        prep, name = _CELL_NAMES[next(iter(cells))]
        return _Where.of(f"{prep} {name}")
    if len(rows) == 1:
        return _Where.of(_ROW_PHRASES[next(iter(rows))])
    if len(cols) == 1:
        return _Where.of(_COL_PHRASES[next(iter(cols))])
    if len(boxes) == 1:
        # One box over several rows and columns: a diagonal scratch runs across; a big blob
        # is placed by its centre (its size word already says it is large).
        if noun.line_like:
            return _Where("running across the surface", "running across")
        x0, y0, x1, y1 = boxes[0]
        prep, name = _CELL_NAMES[_grid_cell((x0 + x1) / 2, (y0 + y1) / 2, w, h)]
        return _Where.of(f"{prep} {name}")
    return _Where("spread around", "spread across")


def _noun_phrase(class_name: str, boxes: Sequence[Box], w: int, h: int) -> tuple[str, _Noun]:
    noun = noun_for(class_name)
    words = Counter(_size_word(b, w, h, noun) for b in boxes)
    # Most frequent size word; ties go to the larger word so box order never changes the text.
    size = max(words, key=lambda word: (words[word], _SIZE_RANK.index(word)))
    n = len(boxes)
    if noun.mass:
        if n == 1:
            return f"{_article(size)} {size} area of {noun.singular}", noun
        return f"{count_word(n)} {size} areas of {noun.plural}", noun
    if n == 1:
        return f"{_article(size)} {size} {noun.singular}", noun
    return f"{count_word(n)} {size} {noun.plural}", noun


def _validate(boxes: Sequence[Box], w: int, h: int) -> list[Box]:
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    out = []
    for b in boxes:
        if len(b) < 4:
            raise ValueError(f"a box needs (xmin, ymin, xmax, ymax), got {b!r}")
        x0, y0, x1, y1 = (int(v) for v in b[:4])
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"degenerate box {b!r}: xmax/ymax must exceed xmin/ymin")
        out.append((x0, y0, x1, y1))
    return out


def _clause(class_name: str, boxes: Sequence[Box], width: int, height: int) -> tuple[str, _Where]:
    checked = _validate(boxes, width, height)
    if not checked:
        raise ValueError(f"no boxes given for class {class_name!r}")
    phrase, noun = _noun_phrase(class_name, checked, width, height)
    where = _where(checked, width, height, noun)
    if noun.mass and where.before_surface == "covering most of":
        # "a large area of fine crazing covering most of" says the same thing twice.
        phrase = noun.singular
    return phrase, where


def describe_boxes(
    class_name: str,
    boxes: Sequence[Box],
    width: int,
    height: int,
    *,
    surface: str = "steel surface",
) -> str:
    """Describe the defects of one class in an image, e.g.

    "two long scratches in the upper left of a steel surface",
    "a large patch covering most of a steel surface",
    "three small pits spread across a metal surface".

    Args:
        class_name: data-set class name (NEU-DET or synthetic names get readable nouns).
        boxes: (xmin, ymin, xmax, ymax) pixel boxes of that class.
        width, height: image size in pixels.
        surface: what the image shows, with no article ("steel surface").

    Raises:
        ValueError: no boxes, a degenerate box, or a non-positive image size.
    """
    phrase, where = _clause(class_name, boxes, width, height)
    return f"{phrase} {where.before_surface} {_article(surface)} {surface}"


def describe_objects(
    objects: Sequence[tuple[str, Box]],
    width: int,
    height: int,
    *,
    surface: str = "steel surface",
    primary: str | None = None,
) -> str:
    """Describe boxes of several classes in one sentence, the `primary` class first.

    E.g. "two medium patches on the left side and a small inclusion in the centre of a steel
    surface". Other classes follow in first-seen order. With a single class this equals
    `describe_boxes`.

    Raises:
        ValueError: no boxes, a degenerate box, or a non-positive image size.
    """
    by_class: dict[str, list[Box]] = {}
    if primary is not None:
        by_class[primary] = []
    for cls, box in objects:
        by_class.setdefault(cls, []).append(box)
    clauses = [_clause(c, b, width, height) for c, b in by_class.items() if b]
    if not clauses:
        raise ValueError("no boxes given")
    head = [f"{phrase} {where.alone}" for phrase, where in clauses[:-1]]
    phrase, where = clauses[-1]
    last = f"{phrase} {where.before_surface} {_article(surface)} {surface}"
    return ", ".join(head) + " and " + last if head else last


MIN_REGION_PIXELS = 4  # mask components smaller than this are annotation specks, not findings


def mask_boxes(mask: np.ndarray, min_pixels: int = MIN_REGION_PIXELS) -> list[Box]:
    """Tight boxes of the 8-connected regions of a mask, largest region first.

    Args:
        mask: bool or integer array [H, W]; non-zero = finding.
        min_pixels: regions with fewer pixels are dropped (isolated annotation specks).

    Returns:
        (xmin, ymin, xmax, ymax) per region in pixels (max exclusive), sorted by region size
        (descending), then position.
    """
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask) != 0, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    found = [
        (int(areas[k]), (sx.start, sy.start, sx.stop, sy.stop))
        for k, (sy, sx) in enumerate(ndimage.find_objects(labels))
        if areas[k] >= min_pixels
    ]
    found.sort(key=lambda t: (-t[0], t[1]))
    return [box for _, box in found]


def describe_mask(
    class_name: str,
    mask: np.ndarray,
    *,
    surface: str = "steel surface",
    min_pixels: int = MIN_REGION_PIXELS,
) -> str | None:
    """Describe the regions of a pixel mask like boxes: count, size and position words.

    Each 8-connected region of at least `min_pixels` pixels is one finding, described by its
    tight box (`describe_boxes`), relative to the mask's own size [H, W], e.g. "a small crack
    in the centre of a hazelnut".

    Returns:
        The sentence, or None when the mask has no region (nothing to describe).
    """
    boxes = mask_boxes(mask, min_pixels)
    if not boxes:
        return None
    height, width = np.asarray(mask).shape[:2]
    return describe_boxes(class_name, boxes, width, height, surface=surface)
