"""What every box importer (VOC, COCO, YOLO, DeepPCB, NEU-DET) shares.

One row per image. The rules, the same in every box importer:

* ``boxes`` (meta, JSON): ``[[xmin, ymin, xmax, ymax, class], ...]`` in pixels of the image as
  `read_image_size` reports it (from the file's header, never from the annotation's size claim).
  Fractional coordinates are widened to whole pixels (floor of the minimum, ceiling of the
  maximum), so a box covers every pixel it touches.
* A box reaching past its image is clipped to the image and counted (``ImportResult.clipped``,
  each logged with its file) under ``outside="clip"`` (the default); ``outside="refuse"`` stops
  the import with a `DataError` naming the file and the box. A box with no area inside the image
  (or none at all) makes that image's annotation malformed: the image is skipped and counted.
* ``label``: the class with the most boxes; ties go to the class listed first in the data set's
  class list (COCO categories, YOLO names, DeepPCB type ids) or, without one, the class seen first
  in the file. ``multi_label`` appends the image's other classes (sorted). The text always
  describes every box (`describe_objects`, the label's class first).
* Images without boxes become defect-free rows only when the user names their label
  (``empty_label``, e.g. "good"); their text is ``empty_text`` (default "a clean SURFACE with no
  visible defects"), their ``boxes`` is ``[]``. Otherwise they are skipped and counted.
* ``group``: the image's path inside the image folder without its suffix, or the capture group
  of ``group_pattern`` searched in the file name (as in the folder importer).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from domainclip.datasets.describe import describe_objects
from domainclip.datasets.importers._common import Tally, relative_path
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

Box = tuple[int, int, int, int]
Obj = tuple[str, Box]

OUTSIDE_POLICIES = ("clip", "refuse")
DEFAULT_SURFACE = "surface"
_EPS = 1e-6


@dataclass(frozen=True)
class BoxSettings:
    """User choices every box importer takes.

    Attributes:
        kind: importer name for messages ("voc", "coco", ...).
        surface: what the images show, no article ("steel surface"); ends every text.
        multi_label: label = every class boxed in the image (the most frequent first).
        outside: "clip" or "refuse" (see the module docstring).
        empty_label: label of images without boxes; None skips them.
        empty_text: text of those images; None -> "a clean SURFACE with no visible defects".
        group_pattern: compiled regex with one capture group (file name -> group), or None.
    """

    kind: str
    surface: str = DEFAULT_SURFACE
    multi_label: bool = False
    outside: str = "clip"
    empty_label: str | None = None
    empty_text: str | None = None
    group_pattern: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if self.outside not in OUTSIDE_POLICIES:
            raise DataError(
                f"{self.kind}: outside must be one of {', '.join(OUTSIDE_POLICIES)}, "
                f"got {self.outside!r}"
            )
        if not self.surface.strip():
            raise DataError(f"{self.kind}: surface must not be empty (e.g. 'steel surface')")
        if self.empty_label is not None and not self.empty_label.strip():
            raise DataError(f"{self.kind}: empty_label must not be empty (e.g. 'good')")

    @property
    def clean_text(self) -> str:
        return self.empty_text or f"a clean {self.surface} with no visible defects"


def box_settings(kind: str, *, group_pattern: str | None = None, **kw: object) -> BoxSettings:
    """`BoxSettings` from importer keyword arguments (None values take the defaults)."""
    from domainclip.datasets.importers.folder import _compile  # the folder importer's rule

    given = {k: v for k, v in kw.items() if v is not None}
    pattern = _compile(group_pattern)
    return BoxSettings(kind=kind, group_pattern=pattern, **given)  # type: ignore[arg-type]


def pixel_box(x0: float, y0: float, x1: float, y1: float) -> Box:
    """Whole-pixel box covering (x0, y0)-(x1, y1): floor of the minimum, ceiling of the maximum."""
    return (
        math.floor(x0 + _EPS),
        math.floor(y0 + _EPS),
        math.ceil(x1 - _EPS),
        math.ceil(y1 - _EPS),
    )


def fit_boxes(
    objects: Sequence[Obj], w: int, h: int, where: str, settings: BoxSettings, tally: Tally
) -> list[Obj]:
    """Clip (or refuse) boxes reaching past a w x h image; `where` names the annotation file.

    Raises:
        ValueError: a box with no area inside the image (the caller skips the image).
        DataError: a box reaches past the image and ``settings.outside == "refuse"``.
    """
    out: list[Obj] = []
    for i, (cls, (x0, y0, x1, y1)) in enumerate(objects, start=1):
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {i} {[x0, y0, x1, y1]} of {cls!r} has no area")
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            raise ValueError(f"box {i} {[x0, y0, x1, y1]} of {cls!r} lies outside the {w}x{h} image")
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            message = (
                f"{where}: box {i} {[x0, y0, x1, y1]} of {cls!r} reaches past the {w}x{h} image"
            )
            if settings.outside == "refuse":
                raise DataError(
                    f"{settings.kind}: {message}. Fix the annotation, or import with "
                    "--outside clip to clip such boxes to the image (counted and logged)"
                )
            tally.clip(f"{message}; clipped to {[cx0, cy0, cx1, cy1]}")
        out.append((cls, (cx0, cy0, cx1, cy1)))
    return out


def primary_class(objects: Sequence[Obj], order: Sequence[str] = ()) -> str:
    """The class with the most boxes; ties: first in `order`, then first seen."""
    counts = Counter(cls for cls, _ in objects)
    seen = list(counts)  # insertion order = first seen
    rank = {c: i for i, c in enumerate(order)}
    return min(seen, key=lambda c: (-counts[c], rank.get(c, len(rank)), seen.index(c)))


def group_of(image: Path, images_dir: Path, settings: BoxSettings, tally: Tally) -> str:
    """The image's group: `group_pattern`'s capture, else its path in `images_dir` sans suffix."""
    rel = image.relative_to(images_dir).with_suffix("").as_posix()
    pattern = settings.group_pattern
    if pattern is None:
        return rel
    m = pattern.search(image.name)
    if not m or not m.group(1):
        tally.warn("no_group_match", f"{image.name}: group pattern did not match; own group")
        return rel
    return m.group(1)


def box_row(
    image: Path,
    out: Path,
    objects: Sequence[Obj],
    size: tuple[int, int],
    *,
    group: str,
    settings: BoxSettings,
    tally: Tally,
    primary: str | None = None,
    extra_meta: dict[str, str] | None = None,
) -> ManifestRow:
    """The row of an image with (already fitted) boxes; `primary` overrides `primary_class`."""
    w, h = size
    primary = primary or primary_class(objects)
    others = sorted({c for c, _ in objects} - {primary})
    if others:
        tally.warn("mixed_classes", f"{image.name}: boxes of {primary!r} and {others}", quiet=True)
    return ManifestRow(
        image=relative_path(image, out),
        text=describe_objects(objects, w, h, surface=settings.surface, primary=primary),
        label=[primary, *others] if settings.multi_label else [primary],
        group=group,
        meta={
            "boxes": json.dumps([[*box, cls] for cls, box in objects]),
            "width": str(w),
            "height": str(h),
            "text_source": "describe_boxes",
            **(extra_meta or {}),
        },
    )


def clean_row(
    image: Path,
    out: Path,
    size: tuple[int, int],
    *,
    group: str,
    label: str,
    text: str,
    extra_meta: dict[str, str] | None = None,
) -> ManifestRow:
    """The row of a defect-free image: no boxes, the given label and text."""
    return ManifestRow(
        image=relative_path(image, out),
        text=text,
        label=[label],
        group=group,
        meta={
            "boxes": "[]",
            "width": str(size[0]),
            "height": str(size[1]),
            "text_source": "clean_template",
            **(extra_meta or {}),
        },
    )


def empty_image_row(
    image: Path,
    out: Path,
    size: tuple[int, int],
    group: str,
    settings: BoxSettings,
    tally: Tally,
    why: str,
) -> ManifestRow | None:
    """A defect-free row when the user named the label of images without boxes, else a skip."""
    if settings.empty_label is None:
        tally.skip(
            "no_boxes",
            f"{why}; pass --empty-label LABEL (e.g. good) to import such images as defect-free",
        )
        return None
    return clean_row(
        image, out, size, group=group, label=settings.empty_label, text=settings.clean_text
    )


def label_notes(settings: BoxSettings, tally: Tally, order_source: str) -> list[str]:
    """Notes every box import adds: the label rule and how images without boxes were treated."""
    notes = [
        "label = the class with the most boxes (ties: "
        + order_source
        + ")"
        + ("; --multi-label adds the other classes" if settings.multi_label else "")
        + "; the text describes every box"
    ]
    if tally.warnings["mixed_classes"]:
        notes.append(f"{tally.warnings['mixed_classes']} images contain boxes of several classes")
    if settings.empty_label is not None:
        notes.append(
            f"images without boxes are defect-free rows labelled {settings.empty_label!r} "
            f"with the text {settings.clean_text!r}"
        )
    return notes
