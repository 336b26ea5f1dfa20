"""DeepPCB importer: printed-circuit-board test images with their aligned defect-free templates.

Layout (``domainclip data import deeppcb SRC``, SRC = the release or its ``PCBData/`` folder):
``PCBData/groupN/N/<id>_test.jpg`` (a board with defects), ``<id>_temp.jpg`` (its aligned
defect-free template) and ``PCBData/groupN/N_not/<id>.txt``: one defect per line,
``x1 y1 x2 y2 type`` (pixel corners; spaces or commas), type 1 open, 2 short, 3 mousebite,
4 spur, 5 spurious copper, 6 pin hole. The boards are driven by the annotation files.

Two rows per board:

* the test image: ``label`` = the defect type with the most boxes on the board (ties: the lower
  type id; ``multi_label`` appends the board's other types), ``text`` from every box
  (`describe_objects`, e.g. "three small open circuits spread around, a small spur ... of a
  printed circuit board"), ``boxes`` = every defect with its type name;
* the template: ``label`` = ``empty_label`` (default "no_defect"), ``text`` = ``empty_text``
  (default "a clean printed circuit board with no visible defects"), ``boxes`` = ``[]``.

Type names (labels and ``boxes`` classes): open, short, mousebite, spur, spurious_copper,
pin_hole. ``group`` (``group_by``): "board-group" (default: the ``groupN`` folder, so all crops
of one board design stay in one split; 11 groups in the release, so split sizes are coarse but
the scores are not inflated by near-identical crops of one design in train and test) or "board"
(the board id: a test image and its template share a split, finer splits, optimistic scores). Meta: ``board``,
``board_group``, ``pair`` (the other image of the board, relative to the manifest). The
authors' trainval/test lists are not used (one board group is in both).

Errors that stop the import: a defect type outside 1-6 (file and line named). Counted and
logged: a malformed line skips its board (``malformed_annotation``), an empty annotation file
(``no_boxes``), a missing test image (``missing_image``; the board is skipped), a missing
template (``missing_template``; the test row is kept), a test image without annotation file
(``missing_annotation``), an unreadable image (``unreadable_image``). Boxes reaching past the
image follow the box rules (`domainclip.datasets.importers._boxes`: clip and count, or refuse).
"""

from __future__ import annotations

import re
from pathlib import Path

from domainclip.datasets.imageio import ImageReadError, read_image_size
from domainclip.datasets.importers._boxes import (
    BoxSettings,
    Obj,
    box_row,
    box_settings,
    clean_row,
    fit_boxes,
    label_notes,
    primary_class,
)
from domainclip.datasets.importers._common import (
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

KIND = "deeppcb"
SURFACE = "printed circuit board"
EMPTY_LABEL = "no_defect"
# DeepPCB type id -> class name (SOURCE.md / the DeepPCB paper); ids 1..6 in this order.
TYPES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")
GROUP_BY = ("board", "board-group")
_LAYOUT = "PCBData/groupN/N/<id>_test.jpg, <id>_temp.jpg and PCBData/groupN/N_not/<id>.txt"
_SEP = re.compile(r"[,\s]+")


def _root(src: Path) -> Path:
    root = src / "PCBData" if (src / "PCBData").is_dir() else src
    if not any(d.is_dir() and d.name.startswith("group") for d in root.iterdir()):
        raise DataError(f"{KIND}: no group*/ folders in {root} (expected {_LAYOUT})")
    return root


def parse_annotation(path: Path) -> list[Obj]:
    """Defects of one board. ValueError: malformed line; DataError: unknown type (file:line)."""
    objects: list[Obj] = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = [p for p in _SEP.split(line.strip()) if p]
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{i}: {len(parts)} values; expected 5 (x1 y1 x2 y2 type)")
        try:
            x0, y0, x1, y1, t = (int(float(p)) for p in parts)
        except ValueError as exc:
            raise ValueError(f"{path}:{i}: a value is not a number: {line.strip()!r}") from exc
        if not 1 <= t <= len(TYPES):
            raise DataError(
                f"{KIND}: {path}:{i}: defect type {t}; DeepPCB types are "
                + ", ".join(f"{k} {n}" for k, n in enumerate(TYPES, start=1))
                + ". Fix the line (or import this layout with the yolo/voc/coco importers)"
            )
        objects.append((TYPES[t - 1], (x0, y0, x1, y1)))
    return objects


def _board_rows(
    ann: Path, image_dir: Path, out: Path, group: str, settings: BoxSettings, tally: Tally
) -> list[ManifestRow]:
    """The test row and the template row of one board (fewer when something is missing)."""
    board = ann.stem
    test, temp = image_dir / f"{board}_test.jpg", image_dir / f"{board}_temp.jpg"
    if not test.is_file():
        tally.skip("missing_image", f"{ann}: no test image {test}")
        return []
    objects = parse_annotation(ann)
    if not objects:
        tally.skip("no_boxes", f"{ann}: no defects listed; board skipped")
        return []
    size = read_image_size(test)
    objects = fit_boxes(objects, size[0], size[1], str(ann), settings, tally)
    meta = {"board": board, "board_group": image_dir.parent.name}
    has_temp = temp.is_file()
    rows = [
        box_row(
            test,
            out,
            objects,
            size,
            group=group,
            settings=settings,
            tally=tally,
            primary=primary_class(objects, TYPES),
            extra_meta={**meta, "pair": relative_path(temp, out)} if has_temp else meta,
        )
    ]
    if not has_temp:
        tally.skip("missing_template", f"{ann}: no template {temp}; test row kept")
        return rows
    label = settings.empty_label or EMPTY_LABEL
    rows.append(
        clean_row(
            temp,
            out,
            read_image_size(temp),
            group=group,
            label=label,
            text=settings.clean_text,
            extra_meta={**meta, "pair": relative_path(test, out)},
        )
    )
    return rows


def _collect(
    root: Path, out: Path, group_by: str, settings: BoxSettings, tally: Tally
) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    for group_dir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("group")):
        for image_dir in sorted(
            d for d in group_dir.iterdir() if d.is_dir() and not d.name.endswith("_not")
        ):
            ann_dir = group_dir / f"{image_dir.name}_not"
            anns = sorted(ann_dir.glob("*.txt")) if ann_dir.is_dir() else []
            for test in sorted(image_dir.glob("*_test.jpg")):
                if not (ann_dir / f"{test.name[: -len('_test.jpg')]}.txt").is_file():
                    tally.skip("missing_annotation", f"{test}: no annotation in {ann_dir}")
            for ann in anns:
                group = ann.stem if group_by == "board" else group_dir.name
                try:
                    rows.extend(_board_rows(ann, image_dir, out, group, settings, tally))
                except (ValueError, UnicodeDecodeError) as exc:
                    tally.skip("malformed_annotation", f"{exc}; board skipped")
                except (OSError, ImageReadError) as exc:
                    tally.skip("unreadable_image", f"{ann.stem}: {exc}")
    return rows


def import_deeppcb(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    multi_label: bool | None = None,
    outside: str | None = None,
    empty_label: str | None = None,
    empty_text: str | None = None,
    group_by: str | None = None,
) -> ImportResult:
    """Import DeepPCB from `src` into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: no group folders, a bad option, an unknown defect type, or no usable board.
    """
    src = require_dir(src, KIND, _LAYOUT)
    group_by = group_by or "board-group"
    if group_by not in GROUP_BY:
        raise DataError(f"{KIND}: group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    settings = box_settings(
        KIND,
        surface=SURFACE,
        multi_label=multi_label,
        outside=outside,
        empty_label=empty_label or EMPTY_LABEL,
        empty_text=empty_text,
    )
    root = _root(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows = _collect(root, out, group_by, settings, tally)
    notes = [
        *label_notes(settings, tally, "the lower DeepPCB type id")[:2],
        f"templates are defect-free rows labelled {settings.empty_label!r}; group = the "
        + (
            "board id (test image and template together)"
            if group_by == "board"
            else "board group folder (every crop of one board design together)"
        ),
    ]
    if group_by == "board":
        notes.append(
            "crops of one board design (one groupN folder) may land in different splits; "
            "--group-by board-group keeps them together (coarser splits)"
        )
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
        notes=notes,
    )
