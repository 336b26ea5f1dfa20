"""NEU-DET importer: ``SRC/IMAGES/*.jpg`` with Pascal VOC boxes in ``SRC/ANNOTATIONS/*.xml``.

Each image becomes one row:

* ``label``: the image's class. NEU-DET is published as 6 classes x 300 images and the file
  name prefix (``crazing_12.jpg``) is that class. About 7% of the XML files also contain boxes of
  a second class (e.g. inclusions inside a ``patches`` image); the label stays the image's class
  (the XML class that matches the prefix), and ``multi_label=True`` appends the other classes.
  When no XML class matches the prefix, the class with the most boxes wins and the mismatch
  is counted as a warning. An object without a name takes the prefix class.
* ``text``: written from the boxes by `describe_objects` (count, size, position), so it says
  only what the annotation supports.
* meta ``boxes``: JSON ``[[xmin, ymin, xmax, ymax, class], ...]`` in image pixels, kept for
  saliency checks; ``width``/``height``: the image size read from the image file itself.
* ``group``: the image id. NEU-DET records no strip, coil or lot, so images cut from the same
  steel strip can land in different splits; scores on NEU-DET may be optimistic for that reason.

Images are not copied: the manifest refers to them relative to the output folder.
Missing or malformed XML files, XMLs without boxes and unreadable images are skipped, counted
and logged with the file name.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from PIL import Image

from domainclip.datasets.describe import describe_objects
from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

KIND = "neu-det"
SURFACE = "steel surface"
_LAYOUT = "IMAGES/*.jpg and ANNOTATIONS/*.xml (Pascal VOC), as in the NEU-DET release"

Obj = tuple[str, tuple[int, int, int, int]]


def _subdir(src: Path, name: str) -> Path:
    """`src/name`, matched case-insensitively (mirrors use IMAGES, images, Images)."""
    for child in sorted(src.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    raise DataError(f"{KIND}: no {name}/ folder in {src} (expected {_LAYOUT})")


def _prefix_class(stem: str) -> str:
    """``"rolled-in_scale_12"`` -> ``"rolled-in_scale"`` (the class part of a NEU-DET name)."""
    head, _, tail = stem.rpartition("_")
    return head if head and tail.isdigit() else stem


def _parse_objects(xml_path: Path, fallback: str, tally: Tally) -> list[Obj]:
    """Boxes from a VOC file. Raises ValueError (or ET.ParseError) when malformed."""
    root = ET.parse(xml_path).getroot()
    objects: list[Obj] = []
    for i, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            tally.warn("name_from_filename", f"{xml_path.name}: object {i} has no name")
            name = fallback
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"object {i} has no <bndbox>")
        try:
            coords = [int(round(float(box.findtext(k) or ""))) for k in _BOX_KEYS]
        except ValueError as exc:
            raise ValueError(f"object {i} has a non-numeric box coordinate") from exc
        objects.append((name, (coords[0], coords[1], coords[2], coords[3])))
    return objects


_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _clip_boxes(objects: list[Obj], w: int, h: int) -> list[Obj]:
    """Clip boxes to the image; a box with no area left makes the annotation malformed."""
    out: list[Obj] = []
    for cls, (x0, y0, x1, y1) in objects:
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            raise ValueError(f"box {[x0, y0, x1, y1]} of {cls!r} is empty inside {w}x{h}")
        out.append((cls, (cx0, cy0, cx1, cy1)))
    return out


def _primary_class(objects: list[Obj], prefix: str, name: str, tally: Tally) -> str:
    counts = Counter(cls for cls, _ in objects)
    if prefix in counts:
        return prefix
    winner = counts.most_common(1)[0][0]
    tally.warn(
        "class_name_mismatch",
        f"{name}: file name says {prefix!r} but the boxes are {dict(counts)}; using {winner!r}",
    )
    return winner


def _row(image: Path, xml_path: Path, out: Path, multi_label: bool, tally: Tally) -> ManifestRow:
    """One manifest row; raises ValueError/ET.ParseError/OSError for the caller to count."""
    prefix = _prefix_class(image.stem)
    objects = _parse_objects(xml_path, prefix, tally)
    if not objects:
        raise LookupError("no objects")
    with Image.open(image) as im:  # header only: the real size, not the XML's claim
        w, h = im.size
    objects = _clip_boxes(objects, w, h)
    primary = _primary_class(objects, prefix, image.name, tally)
    others = sorted({c for c, _ in objects} - {primary})
    if others:
        tally.warn("mixed_classes", f"{image.name}: boxes of {primary!r} and {others}", quiet=True)
    label = [primary, *others] if multi_label else [primary]
    return ManifestRow(
        image=relative_path(image, out),
        text=describe_objects(objects, w, h, surface=SURFACE, primary=primary),
        label=label,
        group=image.stem,
        meta={
            "boxes": json.dumps([[*box, cls] for cls, box in objects]),
            "width": str(w),
            "height": str(h),
            "text_source": "describe_boxes",
        },
    )


def import_neu_det(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    multi_label: bool = False,
) -> ImportResult:
    """Import NEU-DET from `src` into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: `src` lacks IMAGES/ or ANNOTATIONS/, or no image could be imported.
    """
    src = require_dir(src, KIND, _LAYOUT)
    images_dir, ann_dir = _subdir(src, "IMAGES"), _subdir(src, "ANNOTATIONS")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    xml_by_stem = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml"}
    rows: list[ManifestRow] = []
    used: set[str] = set()
    for image in sorted(images_dir.iterdir()):
        if not image.is_file():
            continue
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            tally.skip("not_image", f"{image}: not an image file")
            continue
        xml_path = xml_by_stem.get(image.stem)
        if xml_path is None:
            tally.skip("missing_annotation", f"{image.name}: no {image.stem}.xml in {ann_dir}")
            continue
        used.add(image.stem)
        try:
            rows.append(_row(image, xml_path, out, multi_label, tally))
        except LookupError:
            tally.skip("no_boxes", f"{xml_path.name}: contains no <object> boxes")
        except (ET.ParseError, ValueError) as exc:
            tally.skip("malformed_annotation", f"{xml_path.name}: {exc}")
        except OSError as exc:
            tally.skip("unreadable_image", f"{image.name}: {exc}")
    for stem in sorted(set(xml_by_stem) - used):
        tally.warn("annotation_without_image", f"{xml_by_stem[stem].name} has no image")
    notes = [
        "group = image id: NEU-DET records no strip or lot, so near-duplicate crops of one "
        "strip may fall into different splits",
    ]
    if tally.warnings["mixed_classes"]:
        notes.append(
            f"{tally.warnings['mixed_classes']} images also contain boxes of another class; "
            + ("all classes are labels" if multi_label else "the label is the image's class")
            + " and the text describes every box"
        )
    return finish_import(
        rows,
        out,
        kind=KIND,
        src=src,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        tally=tally,
        notes=notes,
    )
