"""DeepPCB importer: PCB boards with defect boxes and their aligned defect-free templates.

Layout (the public release, ``PCBData/``)::

    SRC/groupNNNNN/NNNNN/<id>_test.jpg    board with defects (640 x 640, binarised)
    SRC/groupNNNNN/NNNNN/<id>_temp.jpg    the same board region without defects (template)
    SRC/groupNNNNN/NNNNN_not/<id>.txt     one defect per line: ``x1 y1 x2 y2 type``

SRC may be the release folder or its ``PCBData/`` child. Types: 1 open, 2 short, 3 mousebite,
4 spur, 5 copper (spurious copper), 6 pin-hole.

Rows:

* a test board: ``label`` = its most frequent defect type (ties: the lower type id, i.e. the
  order above); the ``text`` names every defect with its size and position (`describe_objects`,
  most frequent type first) and ``boxes`` keeps every box with its type, so nothing is lost by
  the single label. A box partly outside the image is clipped (counted warning); a line that is
  not five integers, or a type outside 1-6, stops that board (counted skip naming the file/line).
  With ``multi_label`` every type on the board is a label (the most frequent first).
* a template: ``label`` ``no defect``, text "a defect-free printed circuit board", no boxes.
* ``group``: the board group folder (``group12000``...) by default, so a board, its template and
  every other crop of the same design stay in one split (the authors' own split puts group20085
  in both halves); ``group_by="board"`` groups only a board with its template (finer splits,
  optimistic scores). Eleven groups of 14-325 boards make group-level splits coarse: the split
  sizes are reported.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image

from domainclip.datasets.describe import describe_objects
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
CLEAN_LABEL = "no defect"
CLEAN_TEXT = "a defect-free printed circuit board"
TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "copper", 6: "pin-hole"}
GROUP_BY = ("group", "board")
_LAYOUT = (
    "groupN/N/<id>_test.jpg, <id>_temp.jpg and groupN/N_not/<id>.txt, as in DeepPCB's PCBData/"
)

Obj = tuple[str, tuple[int, int, int, int]]


def _root(src: Path) -> Path:
    src = require_dir(src, KIND, _LAYOUT)
    if not any(p.name.startswith("group") for p in src.iterdir()) and (src / "PCBData").is_dir():
        src = src / "PCBData"
    if not any(p.is_dir() and p.name.startswith("group") for p in src.iterdir()):
        raise DataError(f"{KIND}: no group*/ folders in {src} (expected {_LAYOUT})")
    return src


def parse_annotation(path: Path, width: int, height: int, tally: Tally) -> list[Obj]:
    """Boxes of one annotation file, clipped to the image.

    Raises:
        ValueError: a line that is not ``x1 y1 x2 y2 type`` with a known type, or an empty box.
    """
    objects: list[Obj] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            x0, y0, x1, y1, t = (int(round(float(p))) for p in parts)
        except ValueError as exc:
            raise ValueError(
                f"line {n}: expected 'x1 y1 x2 y2 type', got {line.strip()!r}"
            ) from exc
        if t not in TYPES:
            raise ValueError(f"line {n}: unknown defect type {t} (DeepPCB types are 1-6)")
        box = (max(0, x0), max(0, y0), min(width, x1), min(height, y1))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"line {n}: box {[x0, y0, x1, y1]} is empty inside {width}x{height}")
        if box != (x0, y0, x1, y1):
            tally.warn("box_clipped", f"{path.name} line {n}: box clipped to the image")
        objects.append((TYPES[t], box))
    return objects


def _primary(objects: list[Obj]) -> str:
    counts = Counter(cls for cls, _ in objects)
    order = list(TYPES.values())
    return min(counts, key=lambda c: (-counts[c], order.index(c)))


def _pair_rows(
    test: Path, ann: Path, out: Path, group: str, multi_label: bool, tally: Tally
) -> list[ManifestRow]:
    """The board's row and its template's row (no template: the board alone, counted)."""
    with Image.open(test) as im:  # header only: the real size
        w, h = im.size
    objects = parse_annotation(ann, w, h, tally)
    if not objects:
        raise LookupError("no boxes")
    primary = _primary(objects)
    meta = {"width": str(w), "height": str(h), "board": test.stem[: -len("_test")]}
    rows = [
        ManifestRow(
            image=relative_path(test, out),
            text=describe_objects(objects, w, h, surface=SURFACE, primary=primary),
            label=[primary, *sorted({c for c, _ in objects} - {primary})]
            if multi_label
            else [primary],
            group=group,
            meta=meta
            | {
                "boxes": json.dumps([[*box, cls] for cls, box in objects]),
                "text_source": "describe_boxes",
            },
        )
    ]
    template = test.with_name(test.name.replace("_test", "_temp"))
    if template.is_file():
        rows.append(
            ManifestRow(
                image=relative_path(template, out),
                text=CLEAN_TEXT,
                label=[CLEAN_LABEL],
                group=group,
                meta=meta | {"boxes": "[]", "text_source": "template"},
            )
        )
    else:
        tally.warn("missing_template", f"{test.name}: no {template.name}")
    return rows


def _boards(root: Path) -> list[tuple[Path, Path]]:
    """(group folder, image folder) pairs: groupN/N with its annotations in groupN/N_not."""
    found = []
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("group")):
        for images in sorted(
            p for p in group.iterdir() if p.is_dir() and not p.name.endswith("_not")
        ):
            found.append((group, images))
    return found


def import_deeppcb(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    group_by: str = "group",
    multi_label: bool = False,
) -> ImportResult:
    """Import DeepPCB from `src` into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: not a DeepPCB layout, an unknown `group_by`, or no usable board.
    """
    if group_by not in GROUP_BY:
        raise DataError(
            f"{KIND}: --group-by must be one of {', '.join(GROUP_BY)}, got {group_by!r}"
        )
    root = _root(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows: list[ManifestRow] = []
    for group, images in _boards(root):
        ann_dir = images.with_name(images.name + "_not")
        for test in sorted(images.glob("*_test.*")):
            board = test.stem[: -len("_test")]
            ann = ann_dir / f"{board}.txt"
            if not ann.is_file():
                tally.skip("missing_annotation", f"{test}: no {ann}")
                continue
            key = group.name if group_by == "group" else board
            try:
                rows += _pair_rows(test, ann, out, key, multi_label, tally)
            except LookupError:
                tally.skip("no_boxes", f"{ann}: no defect lines")
            except ValueError as exc:
                tally.skip("malformed_annotation", f"{ann}: {exc}")
            except OSError as exc:
                tally.skip("unreadable_image", f"{test}: {exc}")
    notes = [
        f"label of a board = its most frequent defect type; every defect is in its text and "
        f"boxes; templates are '{CLEAN_LABEL}' rows in their board's group",
        "group = "
        + (
            "the board group folder (coarse, honest splits)"
            if group_by == "group"
            else "the board (a board and its template; other crops of the same "
            "design may span splits)"
        ),
    ]
    return finish_import(
        rows,
        out,
        kind=KIND,
        src=root,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        tally=tally,
        notes=notes,
    )
