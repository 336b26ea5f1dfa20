"""`validate_manifest`: check every row of a manifest and summarise what is usable.

A row is usable when the manifest reader accepts it (image path and text present, labels parse)
and, with ``check_images``, its image file exists and decodes. Warnings do not make a row
unusable: texts longer than the tokenizer's context (they will be truncated), duplicate image
paths, rows without a split, unreadable masks / malformed boxes in the metadata, masks of
another size than their image, and images that look like masks (a mask name such as
``*_mask.png`` or a ``masks/`` / ``GT/`` folder, and binary single-channel pixels).

The manifest as a whole is ok when at least one row is usable, the file structure is valid
(required columns, known split names), no group (or image) spans two splits, and no row's
image is another row's mask (the mask would be trained on as an image of its own).

Text quality (placeholder / boilerplate texts, texts shared across classes, label leakage;
`datasets.textquality`) is reported beside, by row number; it never makes a manifest unusable.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from domainclip.datasets.imageio import (
    ImageReadError,
    check_image_file,
    load_image,
    read_image_size,
)
from domainclip.datasets.manifest import SPLITS, UNASSIGNED, Manifest, ManifestRow, read_manifest
from domainclip.datasets.maskfiles import is_mask_name, looks_like_mask
from domainclip.datasets.splits import check_leakage, format_leakage
from domainclip.datasets.textquality import TextQuality, text_quality
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

_EXAMPLES_PER_KIND = 3
_ROWS_SHOWN = 10


class TokenCounter(Protocol):
    """What validation needs from a tokenizer (domainclip.models' TextTokenizer has it)."""

    context_length: int

    def count_tokens(self, text: str) -> int: ...


@dataclass
class ValidationReport:
    """Outcome of `validate_manifest`.

    Attributes:
        path: the manifest file.
        n_rows: data rows in the file.
        n_usable: rows that can be used for training/evaluation.
        skips: reason -> row numbers (1-based data rows) of unusable rows.
        warnings: kind -> row numbers of usable rows with a problem.
        examples: kind -> the first few full messages (file names, row and line numbers).
        errors: manifest-level problems (structure, leakage); any error makes `ok` False.
        split_counts: split -> usable rows.
        checked_images, checked_tokens: which checks ran.
        context_length: the tokenizer's limit when tokens were checked.
        text_quality: `TextQuality.to_dict()` of the usable rows (None before reading).
    """

    path: str
    n_rows: int = 0
    n_usable: int = 0
    skips: dict[str, list[int]] = field(default_factory=dict)
    warnings: dict[str, list[int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=dict)
    checked_images: bool = False
    checked_tokens: bool = False
    context_length: int | None = None
    text_quality: dict[str, Any] | None = None
    _quality: TextQuality | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when at least one row is usable and there is no manifest-level error."""
        return self.n_usable > 0 and not self.errors

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skips.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (includes `ok` and `n_skipped`)."""
        d = asdict(self)
        d.pop("_quality", None)
        d["ok"] = self.ok
        d["n_skipped"] = self.n_skipped
        return d

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"manifest: {self.path}",
            f"rows: {self.n_rows} in file, {self.n_usable} usable, {self.n_skipped} skipped",
        ]
        lines += _format_table("skipped", self.skips, self.examples)
        lines += _format_table("warnings", self.warnings, self.examples)
        if self.split_counts:
            order = [*SPLITS, UNASSIGNED]
            parts = [f"{s} {self.split_counts[s]}" for s in order if s in self.split_counts]
            lines.append("splits (usable rows): " + ", ".join(parts))
        checks = [
            "images decoded" if self.checked_images else "images NOT checked",
            f"text length checked against {self.context_length} tokens"
            if self.checked_tokens
            else "text length NOT checked (no tokenizer)",
        ]
        if self._quality is not None:
            lines += self._quality.format()
        lines.append("checks: " + "; ".join(checks))
        lines += [f"ERROR: {e}" for e in self.errors]
        if self.ok:
            lines.append(
                "result: USABLE" + (" (skipped rows are left out)" if self.n_skipped else "")
            )
        else:
            why = "errors above" if self.errors else "no usable row"
            lines.append(f"result: NOT USABLE ({why})")
        return "\n".join(lines)


def _format_table(
    title: str, table: dict[str, list[int]], examples: dict[str, list[str]]
) -> list[str]:
    if not table:
        return []
    lines = [f"{title}:"]
    for kind, rows in sorted(table.items()):
        shown = ", ".join(map(str, rows[:_ROWS_SHOWN])) + (
            ", ..." if len(rows) > _ROWS_SHOWN else ""
        )
        lines.append(f"  {kind}: {len(rows)} (rows {shown})")
        lines += [f"    {m}" for m in examples.get(kind, [])]
    return lines


class _Collector:
    """Accumulates skips / warnings with row numbers and a few example messages per kind."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        self.skipped_rows: set[int] = set()

    def _example(self, kind: str, message: str) -> None:
        ex = self.report.examples.setdefault(kind, [])
        if len(ex) < _EXAMPLES_PER_KIND:
            ex.append(message)

    def skip(self, kind: str, row: int, message: str) -> None:
        self.report.skips.setdefault(kind, []).append(row)
        self.skipped_rows.add(row)
        self._example(kind, message)

    def warn(self, kind: str, row: int, message: str) -> None:
        self.report.warnings.setdefault(kind, []).append(row)
        self._example(kind, message)


def validate_manifest(
    path: str | os.PathLike[str],
    tokenizer: TokenCounter | None = None,
    *,
    check_images: bool = True,
    names: Mapping[str, Sequence[str]] | None = None,
) -> ValidationReport:
    """Check every row of a manifest.

    Args:
        path: CSV or JSONL manifest.
        tokenizer: object with ``count_tokens(text)`` and ``context_length`` (a backbone's
            tokenizer); texts with more tokens are reported as "text_truncated" warnings.
        check_images: decode every image (slow for big data sets, but the only real check).
        names: class -> synonyms (a prompt set's `names:`) for the label-leakage check.

    Returns:
        A `ValidationReport`; never raises for data problems (they are in the report).
    """
    report = ValidationReport(path=str(path), checked_images=check_images)
    try:
        manifest = read_manifest(path)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    report.n_rows = manifest.n_data_rows
    out = _Collector(report)
    for p in manifest.problems:
        if p.severity == "skip":
            out.skip(p.kind, p.row, p.message)
        else:
            out.warn(p.kind, p.row, p.message)
    if tokenizer is not None:
        report.checked_tokens = True
        report.context_length = int(tokenizer.context_length)
    if check_images:
        logger.info("decoding %d images listed in %s", len(manifest.rows), path)
    for row in manifest.rows:
        _check_row(manifest, row, tokenizer, check_images, out)
    usable = [r for r in manifest.rows if r.row not in out.skipped_rows]
    report.n_usable = len(usable)
    report.split_counts = dict(Counter(r.split for r in usable))
    report._quality = text_quality(manifest.rows, names)
    report.text_quality = report._quality.to_dict()
    leaks = check_leakage(manifest.rows)
    if leaks:
        report.errors.append(format_leakage(leaks))
    _check_masks_as_images(manifest, out)
    for rows in (*report.skips.values(), *report.warnings.values()):
        rows.sort()
    return report


def _check_row(
    manifest: Manifest,
    row: ManifestRow,
    tokenizer: TokenCounter | None,
    check_images: bool,
    out: _Collector,
) -> None:
    where = row.where()
    image_path = manifest.image_path(row)
    if check_images:
        try:
            load_image(image_path)
        except ImageReadError as exc:
            out.skip(f"image_{exc.reason}", row.row, f"{where}: {exc}")
            return
    elif not image_path.is_file():  # only existence is checked: say why it is not a file
        try:
            check_image_file(image_path)
        except ImageReadError as exc:
            out.skip(f"image_{exc.reason}", row.row, f"{where}: {exc}")
            return
    if tokenizer is not None:
        n = token_overflow(row.text, tokenizer)
        if n is not None:
            out.warn(
                "text_truncated",
                row.row,
                f"{where}: text has {n} tokens; the model reads {tokenizer.context_length}, "
                "the rest will be truncated",
            )
    if row.split == UNASSIGNED:
        out.warn("no_split", row.row, f"{where}: no split assigned (train/val/test)")
    _check_meta(manifest, row, out)


def _mask_path(manifest: Manifest, mask: str) -> Path:
    p = Path(mask).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(manifest.root / p))


def _check_masks_as_images(manifest: Manifest, out: _Collector) -> None:
    """Error when a row's image is another row's mask (listed by row)."""
    masks = {
        _mask_path(manifest, r.meta["mask"].strip()): r
        for r in manifest.rows
        if r.meta.get("mask", "").strip()
    }
    found = []
    for r in manifest.rows:
        owner = masks.get(manifest.image_path(r))
        if owner is not None and owner is not r:
            message = f"{r.where()}: image {r.image} is the mask of {owner.where()}"
            out.warn("image_is_mask", r.row, message)
            found.append(message)
    if found:
        shown = "; ".join(found[:_EXAMPLES_PER_KIND])
        more = f"; ... and {len(found) - _EXAMPLES_PER_KIND} more" if len(found) > _EXAMPLES_PER_KIND else ""
        out.report.errors.append(
            f"{len(found)} row(s) list a mask as their image ({shown}{more}): a mask is not a "
            "training image; delete those rows (re-import with `domainclip data import folder`, "
            "which pairs masks with their images)"
        )


def token_overflow(text: str, tokenizer: TokenCounter) -> int | None:
    """The token count of `text` when it exceeds the tokenizer's context (the model reads only the
    first `context_length` tokens: the rest is truncated), else None. The one rule for "truncated"
    (`data validate` and `finetune` both use it)."""
    n = tokenizer.count_tokens(text)
    return n if n > tokenizer.context_length else None


def truncated_rows(texts: list[str], tokenizer: TokenCounter) -> list[int]:
    """Indices of the `texts` that the tokenizer truncates (each distinct text tokenised once)."""
    over = {t: token_overflow(t, tokenizer) is not None for t in dict.fromkeys(texts)}
    return [i for i, t in enumerate(texts) if over[t]]


def _check_meta(manifest: Manifest, row: ManifestRow, out: _Collector) -> None:
    """Known metadata columns (docs/DESIGN.md): `mask` must decode and match its image's size,
    `boxes` must parse; an image named and coloured like a mask is flagged."""
    where = row.where()
    image_path = manifest.image_path(row)
    if is_mask_name(Path(row.image)) and looks_like_mask(image_path):
        out.warn(
            "image_looks_like_mask",
            row.row,
            f"{where}: image {row.image} is named like a mask and holds only 0 and one other "
            "value in one channel; if it is a mask, put it in the `mask` column of its image's row",
        )
    mask = row.meta.get("mask", "").strip()
    if mask:
        mask_path = _mask_path(manifest, mask)
        try:
            load_image(mask_path)
        except ImageReadError as exc:
            out.warn("mask_unreadable", row.row, f"{where}: mask {exc}")
        else:
            _check_mask_size(image_path, mask_path, row, out)
    boxes = row.meta.get("boxes", "").strip()
    if boxes:
        problem = _boxes_problem(boxes)
        if problem:
            out.warn("bad_boxes", row.row, f"{where}: boxes {problem}")


def _check_mask_size(image: Path, mask: Path, row: ManifestRow, out: _Collector) -> None:
    try:
        size, mask_size = read_image_size(image), read_image_size(mask)
    except ImageReadError:
        return  # the image itself is reported elsewhere
    if size != mask_size:
        out.warn(
            "mask_size",
            row.row,
            f"{row.where()}: mask {mask} is {mask_size[0]}x{mask_size[1]} but its image is "
            f"{size[0]}x{size[1]} (transforms refuse such a pair; resize or re-export the mask)",
        )


def _boxes_problem(text: str) -> str | None:
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"are not valid JSON ({exc.msg})"
    if not isinstance(boxes, list):
        return "must be a JSON list of [xmin, ymin, xmax, ymax, class]"
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 5 and all(_is_number(v) for v in b[:4])):
            return f"entry {b!r} is not [xmin, ymin, xmax, ymax, class]"
        if b[2] < b[0] or b[3] < b[1]:
            return f"entry {b!r} has max < min"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
