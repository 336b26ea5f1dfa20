"""YOLO importer: one ``.txt`` per image, a line ``class cx cy w h`` per box (fractions of the
image's width and height), and a class-name file.

Layout (``domainclip data import yolo SRC``): images under ``images=`` (a folder inside SRC),
else ``SRC/images/``, else SRC, searched recursively (``images/train/a.jpg``); the label of
``images/train/a.jpg`` is ``labels/train/a.txt`` under ``labels=``, else ``SRC/labels/``, else
beside the image. Class names: ``class_names=`` (a file inside SRC or absolute), else the first
of ``SRC/classes.txt``, ``SRC/obj.names``, ``SRC/data.yaml``, ``SRC/dataset.yaml``. A ``.txt``
names one class per line (line 1 = class 0); a YAML has ``names:`` as a list or an
``{id: name}`` mapping. Existing train/val folders are not kept as splits: splits are assigned
group-aware like every import (group = the image's path inside the image folder).

* Image sizes come from the image headers (`read_image_size`); a box becomes
  ``[(cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H]`` widened to whole pixels.
* A segmentation line ``class x1 y1 x2 y2 x3 y3 ...`` is read as its polygon's bounding box.
* An image without a label file, or with an empty one, is a defect-free row only with
  ``empty_label`` (YOLO's "background image"); otherwise skipped (``missing_annotation`` /
  ``no_boxes``).

Errors that stop the import (message names the file and line): no class-name file, a class
without a name (empty line or empty YAML entry), a class id beyond the names. Counted and logged
instead: a malformed line (wrong number of values, not a number, coordinates above 1.5 that look
like pixels) skips its image (``malformed_annotation``); an unreadable image
(``unreadable_image``); a label file without an image (warning ``annotation_without_image``).
Labels, texts, clipping and groups follow `domainclip.datasets.importers._boxes`.
"""

from __future__ import annotations

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
    primary_class,
)
from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import ConfigError, DataError
from domainclip.io import load_yaml

KIND = "yolo"
_LAYOUT = "images/ and labels/ (one class-cx-cy-w-h .txt per image) and classes.txt or data.yaml"
_NAME_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
_PIXEL_LIKE = 1.5  # normalised coordinates above this are pixels written by mistake


def _name_file(src: Path, class_names: str | None) -> Path:
    if class_names is not None:
        path = Path(class_names).expanduser()
        path = path if path.is_absolute() else src / path
        if not path.is_file():
            raise DataError(f"{KIND}: class-name file {path} not found")
        return path
    for name in _NAME_FILES:
        if (src / name).is_file():
            return src / name
    raise DataError(
        f"{KIND}: no class-name file in {src} (looked for {', '.join(_NAME_FILES)}); write "
        "classes.txt with one class name per line (line 1 = class 0), or pass --class-names FILE"
    )


def _yaml_names(path: Path) -> list[str]:
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise DataError(f"{KIND}: class-name file: {exc}") from exc
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{KIND}: {path}: names keys must be class ids 0, 1, ...") from exc
        if ids != list(range(len(ids))):
            raise DataError(f"{KIND}: {path}: names must number the classes 0..{len(ids) - 1}")
        names = [names.get(i, names.get(str(i))) for i in ids]
    if not isinstance(names, list) or not names:
        raise DataError(f"{KIND}: {path} has no 'names' list (e.g. names: [scratch, dent])")
    out = []
    for i, name in enumerate(names):
        if name is None or not str(name).strip():
            raise DataError(f"{KIND}: {path}: class {i} has no name; write its name in 'names'")
        out.append(str(name).strip())
    return out


def load_class_names(path: Path) -> list[str]:
    """Class names by id from a ``.txt`` (one per line) or YAML (``names``) file.

    Raises:
        DataError: unreadable, empty, or a class without a name (file and line named).
    """
    if path.suffix.lower() in (".yaml", ".yml"):
        return _yaml_names(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{KIND}: cannot read class-name file {path}: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{KIND}: class-name file {path} is empty (one class name per line)")
    for i, line in enumerate(lines):
        if not line.strip():
            raise DataError(
                f"{KIND}: {path}:{i + 1} is empty, so class {i} has no name; write its name "
                "there (line 1 = class 0)"
            )
    return [line.strip() for line in lines]


def _values(parts: list[str], where: str) -> list[float]:
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError as exc:
        raise ValueError(f"{where}: a coordinate is not a number") from exc
    if max(values) > _PIXEL_LIKE:
        raise ValueError(
            f"{where}: coordinates above 1 ({max(values):g}); YOLO coordinates are fractions "
            "of the image size (0-1), these look like pixels"
        )
    return values


def parse_line(parts: list[str], where: str, names: list[str], name_file: Path, size: tuple[int, int]) -> Obj:
    """One label line as a pixel box. ValueError: malformed; DataError: unknown class id."""
    n = len(parts)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise ValueError(f"{where}: {n} values; expected 5 (class cx cy w h) or a polygon")
    try:
        cid = int(parts[0])
    except ValueError as exc:
        raise ValueError(f"{where}: class id {parts[0]!r} is not an integer") from exc
    if not 0 <= cid < len(names):
        raise DataError(
            f"{KIND}: {where}: class id {cid}, but {name_file} names {len(names)} classes "
            f"(ids 0-{len(names) - 1}); fix the label or add the class name"
        )
    v = _values(parts, where)
    w, h = size
    if n == 5:
        cx, cy, bw, bh = v
        return names[cid], pixel_box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
    xs, ys = v[0::2], v[1::2]
    return names[cid], pixel_box(min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)


def _label_path(image: Path, images_dir: Path, labels_dir: Path) -> Path:
    return (labels_dir / image.relative_to(images_dir)).with_suffix(".txt")


def _row(
    image: Path,
    label: Path,
    images_dir: Path,
    ctx: tuple[list[str], Path, Path, BoxSettings, Tally],
) -> ManifestRow | None:
    names, name_file, out, settings, tally = ctx
    size = read_image_size(image)
    group = group_of(image, images_dir, settings, tally)
    if not label.is_file():
        if settings.empty_label is None:
            tally.skip("missing_annotation", f"{image.name}: no label file {label}")
            return None
        return empty_image_row(image, out, size, group, settings, tally, "")
    objects = []
    for i, line in enumerate(label.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip():
            objects.append(parse_line(line.split(), f"{label}:{i}", names, name_file, size))
    if not objects:
        return empty_image_row(image, out, size, group, settings, tally, f"{label} is empty")
    objects = fit_boxes(objects, size[0], size[1], str(label), settings, tally)
    return box_row(
        image, out, objects, size, group=group, settings=settings, tally=tally,
        primary=primary_class(objects, names),
    )


def _collect(images_dir: Path, labels_dir: Path, ctx: tuple[list[str], Path, Path, BoxSettings, Tally]) -> list[ManifestRow]:
    tally = ctx[4]
    rows: list[ManifestRow] = []
    used: set[Path] = set()
    for image in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        if image.suffix.lower() == ".txt" or image == ctx[1]:
            continue
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            tally.skip("not_image", f"{image}: not an image file")
            continue
        label = _label_path(image, images_dir, labels_dir)
        used.add(label)
        try:
            row = _row(image, label, images_dir, ctx)
        except (ValueError, UnicodeDecodeError) as exc:
            tally.skip("malformed_annotation", str(exc))
            continue
        except (OSError, ImageReadError) as exc:
            tally.skip("unreadable_image", f"{image}: {exc}")
            continue
        if row is not None:
            rows.append(row)
    for orphan in sorted(set(labels_dir.rglob("*.txt")) - used - {ctx[1]}):
        tally.warn("annotation_without_image", f"{orphan} has no image")
    return rows


def _folders(src: Path, images: str | None, labels: str | None) -> tuple[Path, Path]:
    def inside(name: str) -> Path:
        if not (src / name).is_dir():
            raise DataError(f"{KIND}: folder {src / name} not found (given as a folder inside SRC)")
        return src / name

    images_dir = inside(images) if images else (src / "images" if (src / "images").is_dir() else src)
    if labels:
        return images_dir, inside(labels)
    return images_dir, (src / "labels" if (src / "labels").is_dir() else images_dir)


def import_yolo(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    images: str | None = None,
    labels: str | None = None,
    class_names: str | None = None,
    surface: str | None = None,
    multi_label: bool | None = None,
    outside: str | None = None,
    empty_label: str | None = None,
    empty_text: str | None = None,
    group_pattern: str | None = None,
) -> ImportResult:
    """Import a YOLO-format data set from `src` into ``out/manifest.csv`` (module docstring).

    Raises:
        DataError: see the module docstring, bad options, or no usable image at all.
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
    name_file = _name_file(src, class_names)
    names = load_class_names(name_file)
    images_dir, labels_dir = _folders(src, images, labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows = _collect(images_dir, labels_dir, (names, name_file, out, settings, tally))
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
        notes=[
            f"classes from {name_file}: {', '.join(names)}",
            *label_notes(settings, tally, "the lower class id"),
        ],
    )
