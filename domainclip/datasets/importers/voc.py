"""Pascal VOC importer: one XML per image, ``<object><name>`` + ``<bndbox>`` per box.

Layout (``domainclip data import voc SRC``): images in ``SRC/JPEGImages/`` or ``SRC/images/``,
XML files in ``SRC/Annotations/`` (folder names matched case-insensitively; ``images=`` and
``annotations=`` name other folders inside SRC), or XML files beside the images directly in SRC.
An image's XML is the one with the same file stem. Only the image folder's own files are read
(no sub-folders).

The import is driven by the images: an image without an XML is skipped (``missing_annotation``);
an XML without an image is counted as the warning ``annotation_without_image``. A malformed XML
(unparseable, an object without ``<name>`` or ``<bndbox>``, a non-numeric coordinate, a box with
no area inside the image) skips its image (``malformed_annotation``), logged with the file and
object number. Unreadable images are skipped (``unreadable_image``). An XML whose ``<size>``
differs from the image's real size is kept (boxes are read as pixels of the real image) and
counted as ``size_mismatch``. Boxes, labels, texts, images without boxes and groups follow the
box rules in `domainclip.datasets.importers._boxes`.

Presets (NEU-DET, `neu_det.py`) reuse `import_voc_layout` with their own folder names, label
rule and notes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from domainclip.datasets.imageio import ImageReadError, read_image_size
from domainclip.datasets.importers._boxes import (
    BoxSettings,
    Obj,
    box_row,
    box_settings,
    empty_image_row,
    fit_boxes,
    group_of,
    label_notes,
    pixel_box,
)
from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

KIND = "voc"
_LAYOUT = "JPEGImages/ (or images/) and Annotations/ with one Pascal VOC XML per image"
_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocPreset:
    """How a VOC-style data set differs from plain VOC.

    Attributes:
        kind: importer name for messages and counts.
        layout: what SRC must contain (for error messages).
        name_fallback: image -> class for objects without ``<name>`` (None: such XML is malformed).
        primary: (objects, image, tally) -> the label class (None: the most boxes).
        notes: remarks added to the import result.
    """

    kind: str = KIND
    layout: str = _LAYOUT
    name_fallback: Callable[[Path], str] | None = None
    primary: Callable[[list[Obj], Path, Tally], str] | None = None
    notes: list[str] = field(default_factory=list)


def find_subdir(src: Path, names: tuple[str, ...], kind: str, layout: str) -> Path:
    """The first of `names` inside `src`, matched case-insensitively (mirrors vary the case)."""
    children = {c.name.lower(): c for c in sorted(src.iterdir()) if c.is_dir()}
    for name in names:
        if name.lower() in children:
            return children[name.lower()]
    raise DataError(f"{kind}: no {names[0]}/ folder in {src} (expected {layout})")


def _named_dir(src: Path, name: str, kind: str) -> Path:
    path = src / name
    if not path.is_dir():
        raise DataError(f"{kind}: folder {path} not found (given as a folder inside SRC)")
    return path


def voc_folders(src: Path, images: str | None, annotations: str | None) -> tuple[Path, Path]:
    """(image folder, annotation folder) for plain VOC; see the module docstring."""
    if annotations is not None:
        ann = _named_dir(src, annotations, KIND)
    elif any(p.suffix.lower() == ".xml" for p in src.iterdir() if p.is_file()):
        ann = src
    else:
        ann = find_subdir(src, ("Annotations",), KIND, _LAYOUT)
    if images is not None:
        return _named_dir(src, images, KIND), ann
    if ann == src:
        return src, ann
    return find_subdir(src, ("JPEGImages", "images"), KIND, _LAYOUT), ann


def parse_voc(xml_path: Path, preset: VocPreset, image: Path, tally: Tally) -> tuple[list[Obj], tuple[int, int] | None]:
    """Objects and the declared ``<size>`` of a VOC file.

    Raises:
        ValueError / ET.ParseError: the file is malformed (message names the object).
    """
    root = ET.parse(xml_path).getroot()
    objects: list[Obj] = []
    for i, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            if preset.name_fallback is None:
                raise ValueError(f"object {i} has no <name>: write its class name")
            tally.warn("name_from_filename", f"{xml_path.name}: object {i} has no name")
            name = preset.name_fallback(image)
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"object {i} has no <bndbox>")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k) or "") for k in _BOX_KEYS)
        except ValueError as exc:
            raise ValueError(f"object {i} has a missing or non-numeric box coordinate") from exc
        objects.append((name, pixel_box(x0, y0, x1, y1)))
    try:
        declared = (int(root.findtext("size/width") or ""), int(root.findtext("size/height") or ""))
    except ValueError:
        declared = None
    return objects, declared


def _row(
    image: Path,
    xml_path: Path,
    images_dir: Path,
    out: Path,
    settings: BoxSettings,
    preset: VocPreset,
    tally: Tally,
) -> ManifestRow | None:
    """One image's row; raises ValueError/ET.ParseError/OSError for the caller to count."""
    objects, declared = parse_voc(xml_path, preset, image, tally)
    size = read_image_size(image)  # the real size, not the XML's claim
    if declared is not None and declared != size and declared != (0, 0):
        tally.warn(
            "size_mismatch",
            f"{xml_path.name}: <size> says {declared[0]}x{declared[1]}, the image is "
            f"{size[0]}x{size[1]}; boxes are read as pixels of the image",
        )
    group = group_of(image, images_dir, settings, tally)
    if not objects:
        why = f"{xml_path.name}: contains no <object> boxes"
        return empty_image_row(image, out, size, group, settings, tally, why)
    objects = fit_boxes(objects, size[0], size[1], xml_path.name, settings, tally)
    primary = preset.primary(objects, image, tally) if preset.primary else None
    return box_row(
        image, out, objects, size, group=group, settings=settings, tally=tally, primary=primary
    )


def _collect(
    images_dir: Path, ann_dir: Path, out: Path, settings: BoxSettings, preset: VocPreset, tally: Tally
) -> list[ManifestRow]:
    xml_by_stem = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml"}
    rows: list[ManifestRow] = []
    used: set[str] = set()
    for image in sorted(images_dir.iterdir()):
        if not image.is_file() or image.suffix.lower() == ".xml":
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
            row = _row(image, xml_path, images_dir, out, settings, preset, tally)
        except (ET.ParseError, ValueError) as exc:
            tally.skip("malformed_annotation", f"{xml_path}: {exc}")
            continue
        except (OSError, ImageReadError) as exc:
            tally.skip("unreadable_image", f"{image.name}: {exc}")
            continue
        if row is not None:
            rows.append(row)
    for stem in sorted(set(xml_by_stem) - used):
        tally.warn("annotation_without_image", f"{xml_by_stem[stem]} has no image")
    return rows


def import_voc_layout(
    src: Path,
    out: Path,
    images_dir: Path,
    ann_dir: Path,
    settings: BoxSettings,
    preset: VocPreset,
    *,
    seed: int,
    val_frac: float,
    test_frac: float,
    calib_frac: float,
) -> ImportResult:
    """Import VOC files from `ann_dir` for the images in `images_dir` (the shared engine)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows = _collect(images_dir, ann_dir, out, settings, preset, tally)
    notes = [*preset.notes, *label_notes(settings, tally, "first seen in the file")]
    if preset.primary is not None:  # the preset's notes state its own label rule
        notes = [*preset.notes, *label_notes(settings, tally, "")[1:]]
    return finish_import(
        rows,
        out,
        kind=preset.kind,
        src=src,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        calib_frac=calib_frac,
        tally=tally,
        notes=notes,
    )


def import_voc(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    images: str | None = None,
    annotations: str | None = None,
    surface: str | None = None,
    multi_label: bool | None = None,
    outside: str | None = None,
    empty_label: str | None = None,
    empty_text: str | None = None,
    group_pattern: str | None = None,
) -> ImportResult:
    """Import a Pascal VOC data set from `src` into ``out/manifest.csv`` (module docstring).

    Args:
        images, annotations: folders inside `src` (default: found as described above).
        surface, multi_label, outside, empty_label, empty_text, group_pattern: `BoxSettings`.

    Raises:
        DataError: no image or annotation folder, bad options, a box outside its image under
            ``outside="refuse"``, or no usable image at all.
    """
    src = require_dir(src, KIND, _LAYOUT)
    settings = box_settings(
        KIND,
        group_pattern=group_pattern,
        surface=surface,
        multi_label=multi_label,
        outside=outside,
        empty_label=empty_label,
        empty_text=empty_text,
    )
    images_dir, ann_dir = voc_folders(src, images, annotations)
    return import_voc_layout(
        src,
        out,
        images_dir,
        ann_dir,
        settings,
        VocPreset(),
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        calib_frac=calib_frac,
    )
