"""Manifest browsing for the Data page: a display table, filters, thumbnails, validation.

No Streamlit here (the page caches these results); every path has already been checked by
`RunsAccess` before it reaches these functions.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from domainclip.datasets.manifest import Manifest, read_manifest
from domainclip.io import resolve_path
from domainclip.privacy import displayable_columns, hidden_columns, image_name, pseudonym

THUMBNAIL_PX = 160
# Metadata columns with more distinct values than this are filtered by substring, not by a
# list of values (a multiselect over thousands of box strings is useless).
MAX_FILTER_VALUES = 50
# Columns that are machinery (paths, JSON boxes), not something to filter on.
_NOT_FILTERABLE = frozenset({"mask", "boxes", "width", "height"})


@dataclass
class ManifestView:
    """A manifest prepared for display.

    Attributes:
        table: one row per usable manifest row: ``row`` (1-based data row), ``image`` (the
            path as written in the manifest with `show_paths`, else "row N": file names may be
            patient or case ids, `privacy.image_name`), ``text``, ``label`` (``|``-joined), ``split``, ``group``
            (keyed pseudonym) and the displayable metadata columns.
        images: absolute image path per table row (same order), for thumbnails.
        meta_columns: displayable metadata columns (in the table).
        hidden_columns: metadata columns withheld (not on the safe list, not allowed; names only).
        problems: rows the reader skipped or warned about: ``row``, ``line``, ``kind``,
            ``severity``, ``message``.
    """

    table: pd.DataFrame
    images: list[Path]
    meta_columns: list[str]
    hidden_columns: list[str]
    problems: pd.DataFrame
    listed_files: frozenset[Path] = field(default_factory=frozenset)


def _meta_columns(manifest: Manifest) -> list[str]:
    seen: dict[str, None] = {}
    for row in manifest.rows:
        for k in row.meta:
            seen.setdefault(k, None)
    return list(seen)


def listed_files(manifest: Manifest) -> frozenset[Path]:
    """Every file the manifest lists: row images and pixel masks (resolved)."""
    paths = [manifest.image_path(r) for r in manifest.rows]
    paths += [manifest.root / m for r in manifest.rows if (m := r.meta.get("mask", "").strip())]
    out = set()
    for p in paths:
        try:
            out.add(resolve_path(p))
        except OSError:  # a symlink loop lists nothing readable
            continue
    return frozenset(out)


def manifest_view(
    path: Path, key: bytes, allowed: Iterable[str] = (), show_paths: bool = False
) -> ManifestView:
    """Read a manifest and build its display table.

    Args:
        path: the manifest (already checked by the read guard).
        key: pseudonym key of the runs directory (`privacy.pseudonym_key`).
        allowed: metadata columns the user allowed beyond `privacy.SAFE_COLUMNS`.
        show_paths: show image paths in the table (`--show-paths`), else row numbers.
    """
    manifest = read_manifest(path)
    meta = _meta_columns(manifest)
    shown = displayable_columns(meta, allowed)
    records: list[dict[str, Any]] = []
    for r in manifest.rows:
        rec: dict[str, Any] = {
            "row": r.row,
            "image": image_name(r.row, r.image, show_paths),
            "text": r.text,
            "label": "|".join(r.label),
            "split": r.split,
            "group": pseudonym(r.group, key),
        }
        for c in shown:
            rec[c] = r.meta.get(c, "")
        records.append(rec)
    columns = ["row", "image", "text", "label", "split", "group", *shown]
    problems = pd.DataFrame(
        [
            {
                "row": p.row,
                "line": p.line,
                "kind": p.kind,
                "severity": p.severity,
                "message": p.message,
            }
            for p in manifest.problems
        ],
        columns=["row", "line", "kind", "severity", "message"],
    )
    return ManifestView(
        table=pd.DataFrame(records, columns=columns),
        images=[_resolved_or_lexical(manifest.image_path(r)) for r in manifest.rows],
        meta_columns=shown,
        hidden_columns=hidden_columns(meta, allowed),
        problems=problems,
        listed_files=listed_files(manifest),
    )


def image_of_row(view: ManifestView, row: int) -> Path | None:
    """The absolute image path of manifest row `row` (None when the view has no such row):
    results name images by row, the dashboard finds the file through the manifest."""
    hits = [i for i, r in enumerate(view.table["row"]) if int(r) == int(row)]
    return view.images[hits[0]] if hits else None


def labels_of(table: pd.DataFrame) -> list[str]:
    """Sorted distinct labels (multi-label cells split)."""
    return sorted({lab for cell in table["label"] for lab in str(cell).split("|") if lab})


def filterable_meta(view: ManifestView) -> dict[str, list[str]]:
    """Metadata column -> sorted distinct values, for columns worth a value filter."""
    out: dict[str, list[str]] = {}
    for c in view.meta_columns:
        if c in _NOT_FILTERABLE:
            continue
        values = sorted({str(v) for v in view.table[c]})
        if 1 < len(values) <= MAX_FILTER_VALUES:
            out[c] = values
    return out


def filter_table(
    table: pd.DataFrame,
    *,
    labels: list[str] | None = None,
    splits: list[str] | None = None,
    groups: list[str] | None = None,
    meta: dict[str, list[str]] | None = None,
    text_contains: str = "",
) -> pd.DataFrame:
    """Rows matching every given filter (an empty or None filter keeps everything).

    `labels` keeps rows having any of the labels; `meta` maps a column to allowed values.
    """
    keep = pd.Series(True, index=table.index)
    if labels:
        wanted = set(labels)
        keep &= table["label"].map(lambda cell: bool(wanted & set(str(cell).split("|"))))
    if splits:
        keep &= table["split"].isin(splits)
    if groups:
        keep &= table["group"].isin(groups)
    for column, values in (meta or {}).items():
        if values:
            keep &= table[column].astype(str).isin(values)
    if text_contains:
        keep &= table["text"].str.contains(text_contains, case=False, regex=False)
    return table[keep]


def thumbnail_png(path: Path, size: int = THUMBNAIL_PX) -> bytes:
    """PNG bytes of a thumbnail, decoded robustly (pixels only: no DICOM header is kept).

    Raises:
        ImageReadError: the image cannot be decoded.
    """
    from domainclip.datasets import load_image

    img = load_image(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def validation_summary(path: Path, check_images: bool = True) -> dict[str, Any]:
    """`validate_manifest` (decoding images unless told not to), as a JSON-able dict (see
    ValidationReport)."""
    from domainclip.datasets import validate_manifest

    return validate_manifest(path, check_images=check_images).to_dict()


def _resolved_or_lexical(path: Path) -> Path:
    """The resolved path; a path that cannot be resolved (symlink loop) stays as written and
    fails later where the image is read, as an unreadable image."""
    try:
        return resolve_path(path)
    except OSError:
        return path
