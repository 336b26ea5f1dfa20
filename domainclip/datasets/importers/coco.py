"""COCO importer: one JSON with ``images``, ``annotations`` (``bbox`` = [x, y, width, height]) and
``categories`` (``id``, ``name``).

Layout (``domainclip data import coco SRC``): the JSON is ``annotations=`` (a path inside SRC or
absolute), else the only ``*.json`` in ``SRC/annotations/`` or SRC. Each image's ``file_name`` is
resolved inside ``images=`` (a folder inside SRC), else ``SRC/images/``, else SRC.

* ``bbox`` [x, y, w, h] becomes the manifest's ``[xmin, ymin, xmax, ymax, class]`` with
  xmax = x + w, ymax = y + h, widened to whole pixels; the class is the category's ``name``.
* Images listed without annotations become defect-free rows only with ``empty_label`` (e.g.
  "good"); otherwise they are skipped (``no_boxes``).
* Segmentation polygons and keypoints are ignored (boxes only).

Errors that stop the import (the JSON is wrong as a whole, message names the entry): invalid JSON
(with line and column), a missing ``images``/``annotations``/``categories`` list, a category
without a name, two categories with one id, an image entry without ``id`` or ``file_name``, an
annotation whose ``category_id`` is not among the categories. Counted and logged instead: an image
file that does not exist (``missing_image``), an unreadable image (``unreadable_image``), a
malformed ``bbox`` or one with no area inside its image (``malformed_annotation``, the image is
skipped), a file listed twice (``duplicate_image``), an annotation whose ``image_id`` is not
among the images (warning ``annotation_without_image``), and a ``width``/``height`` that differs
from the image file's (warning ``size_mismatch``; boxes are read as pixels of the real image).
Labels, texts, clipping and groups follow `domainclip.datasets.importers._boxes`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

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
    primary_class,
)
from domainclip.datasets.importers._common import ImportResult, Tally, finish_import, require_dir
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

KIND = "coco"
_LAYOUT = "a COCO JSON (images, annotations, categories) and the images it names"


def _find_json(src: Path, annotations: str | None) -> Path:
    if annotations is not None:
        path = Path(annotations).expanduser()
        path = path if path.is_absolute() else src / path
        if not path.is_file():
            raise DataError(f"{KIND}: annotation file {path} not found")
        return path
    for folder in (src / "annotations", src):
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataError(
                f"{KIND}: {folder} holds several JSON files ({names}); "
                "name one with --annotations FILE"
            )
    raise DataError(f"{KIND}: no *.json in {src}/annotations or {src} (expected {_LAYOUT})")


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{KIND}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); fix the file"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{KIND}: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{KIND}: {path} must hold a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{KIND}: {path} has no {key!r} list (a COCO file holds images, annotations "
                "and categories lists)"
            )
    return data


def _categories(data: dict[str, Any], path: Path) -> dict[Any, str]:
    """category id -> name; raises DataError for a nameless or repeated category."""
    names: dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        name = cat.get("name") if isinstance(cat, dict) else None
        if cid is None:
            raise DataError(f"{KIND}: {path}: categories[{i}] has no id")
        if not isinstance(name, str) or not name.strip():
            raise DataError(
                f"{KIND}: {path}: categories[{i}] (id {cid}) has no name; give every category "
                "the class name the manifest should use"
            )
        if cid in names:
            raise DataError(f"{KIND}: {path}: categories[{i}] repeats id {cid} ({names[cid]!r})")
        names[cid] = name.strip()
    return names


def _images(data: dict[str, Any], path: Path) -> list[tuple[Any, str, Any]]:
    """(id, file_name, (width, height) or None) per image entry, in file order."""
    out = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or img.get("id") is None or not img.get("file_name"):
            raise DataError(f"{KIND}: {path}: images[{i}] needs an id and a file_name")
        declared = (img.get("width"), img.get("height"))
        out.append((img["id"], str(img["file_name"]), declared if None not in declared else None))
    return out


def _objects(
    data: dict[str, Any], path: Path, names: dict[Any, str], image_ids: set[Any], tally: Tally
) -> tuple[dict[Any, list[Obj]], dict[Any, str]]:
    """Boxes per image id, and the images whose annotations are malformed (id -> why)."""
    by_image: dict[Any, list[Obj]] = defaultdict(list)
    bad: dict[Any, str] = {}
    known = ", ".join(map(str, list(names)[:10])) + (" ..." if len(names) > 10 else "")
    for i, ann in enumerate(data["annotations"]):
        where = f"{path.name}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{KIND}: {where} is not an object")
        if ann.get("category_id") not in names:
            raise DataError(
                f"{KIND}: {where} (id {ann.get('id')}) has category_id "
                f"{ann.get('category_id')!r}, which is not among the categories ({known}); "
                "add the category or fix the annotation"
            )
        image_id = ann.get("image_id")
        if image_id not in image_ids:
            tally.warn("annotation_without_image", f"{where}: image_id {image_id!r} is not listed")
            continue
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            bad.setdefault(image_id, f"{where}: bbox {bbox!r} is not [x, y, width, height]")
            continue
        by_image[image_id].append((names[ann["category_id"]], pixel_box(x, y, x + w, y + h)))
    return by_image, bad


def _image_file(file_name: str, bases: list[Path]) -> tuple[Path, Path] | None:
    for base in bases:
        if (base / file_name).is_file():
            return base / file_name, base
    return None


def _row(
    entry: tuple[Any, str, Any],
    found: tuple[Path, Path],
    objects: list[Obj],
    out: Path,
    settings: BoxSettings,
    order: list[str],
    tally: Tally,
) -> ManifestRow | None:
    image_id, file_name, declared = entry
    image, base = found
    size = read_image_size(image)
    if declared is not None and tuple(declared) != size:
        tally.warn(
            "size_mismatch",
            f"{file_name}: the JSON says {declared[0]}x{declared[1]}, the image is "
            f"{size[0]}x{size[1]}; boxes are read as pixels of the image",
        )
    group = group_of(image, base, settings, tally)
    if not objects:
        why = f"{file_name} (image id {image_id}) has no annotations"
        return empty_image_row(image, out, size, group, settings, tally, why)
    objects = fit_boxes(objects, size[0], size[1], f"{file_name}", settings, tally)
    return box_row(
        image,
        out,
        objects,
        size,
        group=group,
        settings=settings,
        tally=tally,
        primary=primary_class(objects, order),
    )


def _collect(
    src: Path, path: Path, images: str | None, out: Path, settings: BoxSettings, tally: Tally
) -> list[ManifestRow]:
    data = _load(path)
    names = _categories(data, path)
    entries = _images(data, path)
    by_image, bad = _objects(data, path, names, {e[0] for e in entries}, tally)
    bases = [src / images] if images is not None else [src / "images", src]
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for entry in entries:
        image_id, file_name, _ = entry
        if file_name in seen:
            tally.skip("duplicate_image", f"{path.name}: {file_name} is listed twice")
            continue
        seen.add(file_name)
        found = _image_file(file_name, bases)
        if found is None:
            where = " or ".join(str(b) for b in bases)
            tally.skip("missing_image", f"{path.name}: {file_name} (image id {image_id}) not in {where}")
            continue
        if image_id in bad:
            tally.skip("malformed_annotation", bad[image_id])
            continue
        try:
            row = _row(entry, found, by_image.get(image_id, []), out, settings, list(names.values()), tally)
        except ValueError as exc:
            tally.skip("malformed_annotation", f"{path.name}: {file_name}: {exc}")
            continue
        except (OSError, ImageReadError) as exc:
            tally.skip("unreadable_image", f"{file_name}: {exc}")
            continue
        if row is not None:
            rows.append(row)
    return rows


def import_coco(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    annotations: str | None = None,
    images: str | None = None,
    surface: str | None = None,
    multi_label: bool | None = None,
    outside: str | None = None,
    empty_label: str | None = None,
    empty_text: str | None = None,
    group_pattern: str | None = None,
) -> ImportResult:
    """Import a COCO-format data set from `src` into ``out/manifest.csv`` (module docstring).

    Raises:
        DataError: see the module docstring, bad options, or no usable image at all.
    """
    src = require_dir(src, KIND, _LAYOUT)
    if images is not None and not (src / images).is_dir():
        raise DataError(f"{KIND}: image folder {src / images} not found")
    settings = box_settings(
        KIND,
        group_pattern=group_pattern,
        surface=surface,
        multi_label=multi_label,
        outside=outside,
        empty_label=empty_label,
        empty_text=empty_text,
    )
    path = _find_json(src, annotations)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows = _collect(src, path, images, out, settings, tally)
    return finish_import(
        rows,
        out,
        kind=KIND,
        src=src,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        calib_frac=calib_frac,
        tally=tally,
        notes=[f"annotations: {path}", *label_notes(settings, tally, "the categories' order")],
    )
