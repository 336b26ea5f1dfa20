"""Manifest I/O: the CSV / JSONL table that pairs images with texts.

Columns (see docs/DESIGN.md): `image` (path relative to the manifest file, or absolute), `text`,
optional `label` (multi-label joined by ``|`` in CSV, a list in JSONL), `group` (patient / study /
lot id), `split` (train / val / test) and any other column, which becomes `meta` (str values).

Reading never loses rows silently: a row that cannot be used is skipped and recorded as a
`ManifestProblem` (counted per kind and logged), or raises `DataError` with ``strict=True``.
File-level problems (missing columns, unknown split names, unreadable file) always raise
`DataError` naming the file, and the row and line where that applies.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainclip.errors import DataError
from domainclip.io import atomic_write_text

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "text")
OPTIONAL_COLUMNS: tuple[str, ...] = ("label", "group", "split")
CORE_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# calib: held-out data used only to calibrate (conformal thresholds); optional.
SPLITS: tuple[str, ...] = ("train", "val", "test", "calib")
UNASSIGNED = "unassigned"
LABEL_SEP = "|"
# How spreadsheets and pandas spell a missing value: such a label cell means "no label", never
# a class named "NaN".
MISSING_LABELS = frozenset({"nan", "null", "none", "n/a", "na", "<na>", "#n/a"})

# Common spellings mapped to the canonical split names; "" and "unassigned" mean "not yet split".
SPLIT_ALIASES: Mapping[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "calib": "calib",
    "cal": "calib",
    "calibration": "calib",
    "test": "test",
    "testing": "test",
    "": UNASSIGNED,
    UNASSIGNED: UNASSIGNED,
}

# Column names people often use instead of ours: only used to suggest a rename in error messages.
_COLUMN_HINTS: Mapping[str, tuple[str, ...]] = {
    "image": ("path", "filename", "file", "image_path", "img", "image_file", "filepath"),
    "text": ("caption", "report", "description", "clinical_notes", "findings", "prompt"),
}

_MAX_LISTED = 5  # how many offending rows an error message lists before "... and N more"


@dataclass
class ManifestRow:
    """One image-text pair.

    `row` and `line` locate the row in the file it was read from (1-based data row number and
    1-based physical line number; 0 when the row was built in memory). They are not written.
    """

    image: str
    text: str
    label: list[str] = field(default_factory=list)
    group: str = ""
    split: str = UNASSIGNED
    meta: dict[str, str] = field(default_factory=dict)
    row: int = 0
    line: int = 0

    def where(self) -> str:
        """Human-readable location for messages, e.g. ``"row 3 (line 4)"``."""
        if not self.row:
            return f"image {self.image!r}"
        return f"row {self.row} (line {self.line})"


@dataclass(frozen=True)
class ManifestProblem:
    """A row-level problem found while reading. `severity` is "skip" (row dropped) or "warning"."""

    kind: str
    row: int
    line: int
    message: str
    severity: str = "skip"


@dataclass
class Manifest:
    """Rows read from a manifest file plus everything that was skipped or looked suspicious.

    Attributes:
        rows: usable rows, in file order.
        root: directory that relative image paths are resolved against (the manifest's folder).
        path: the manifest file (None for in-memory manifests).
        columns: column names as found in the file (JSONL: union of keys, in first-seen order).
        problems: skips and warnings, in file order.
        n_data_rows: data rows in the file (usable + skipped).
        encoding: the text encoding the file was decoded with.
    """

    rows: list[ManifestRow]
    root: Path
    path: Path | None = None
    columns: list[str] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)
    n_data_rows: int = 0
    encoding: str = "utf-8"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def image_path(self, row: ManifestRow) -> Path:
        """Absolute path of a row's image (relative paths are relative to the manifest).

        Purely lexical (no filesystem access): a missing file, a symlink loop or a permission
        problem is found when the image is read, where it becomes a counted, named skip.
        """
        p = Path(row.image).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.root / p))

    @property
    def skipped(self) -> dict[str, int]:
        """Number of skipped rows per problem kind."""
        return dict(Counter(p.kind for p in self.problems if p.severity == "skip"))

    @property
    def n_skipped(self) -> int:
        return sum(1 for p in self.problems if p.severity == "skip")

    @property
    def warnings(self) -> list[ManifestProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    def split_counts(self) -> dict[str, int]:
        """Rows per split value (including "unassigned")."""
        return dict(Counter(r.split for r in self.rows))


# ----------------------------------------------------------------------------------------------
# Parsing helpers


def normalize_split(value: str | None) -> str | None:
    """Map a split name or alias to train/val/test/calib/unassigned; None if not recognised."""
    key = (value or "").strip().lower()
    return SPLIT_ALIASES.get(key)


def parse_label(value: Any) -> list[str]:
    """Parse a label cell: ``"a|b"`` (CSV) or a list / scalar (JSONL) -> ``["a", "b"]``.

    Raises ValueError for values that cannot be a label (dicts, nested lists, booleans).
    """
    if value is None:
        return []
    if isinstance(value, (bool, dict)):
        raise ValueError(f"label must be a string or a list of strings, got {value!r}")
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, str):
        return [p.strip() for p in value.split(LABEL_SEP) if p.strip()]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            if isinstance(item, (list, dict, bool)) or item is None:
                raise ValueError(f"label list items must be strings, got {item!r}")
            s = str(item).strip()
            if s:
                out.append(s)
        return out
    raise ValueError(f"label must be a string or a list of strings, got {value!r}")


def _meta_value(value: Any) -> str:
    # JSONL may carry structured metadata (e.g. boxes as a list); store it as JSON text so that
    # CSV and JSONL manifests yield the same meta strings.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return str(value)


def _decode(path: Path, data: bytes) -> tuple[str, str]:
    """Decode manifest bytes: UTF-16 by its BOM, utf-8 (BOM stripped), else latin-1 with a warning."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" export
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} starts with a UTF-16 byte-order mark but is not valid UTF-16 "
                f"(offset {exc.start}); re-save it as UTF-8"
            ) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    bomless = _bomless_utf16(data)
    if bomless:
        try:
            text = data.decode(bomless)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} looks like UTF-16 without a byte-order mark but is not valid {bomless} "
                f"(offset {exc.start}); re-save it as UTF-8"
            ) from None
        logger.warning("%s has no byte-order mark but is %s; decoded as such", path, bomless)
        return text, bomless
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # latin-1 decodes any byte sequence, so this cannot fail; warn because the characters
        # may be wrong if the file is really in another code page (cp1252 quotes, ...).
        logger.warning(
            "%s is not valid UTF-8 (first bad byte at offset %d); decoding it as latin-1. "
            "Re-save it as UTF-8 to silence this warning.",
            path,
            exc.start,
        )
        return data.decode("latin-1"), "latin-1"
    n_lost = text.count("\ufffd")
    if n_lost:
        # U+FFFD means characters were already destroyed upstream (a wrong decode before the
        # file was saved); nothing can restore them, but the user should know.
        logger.warning(
            "%s contains %d U+FFFD replacement characters: some characters were lost before "
            "this file was written (decoded with a wrong encoding upstream); kept as-is.",
            path,
            n_lost,
        )
    return text, "utf-8"


def _bomless_utf16(data: bytes) -> str | None:
    """"utf-16-le"/"utf-16-be" when the first line is ASCII text stored as UTF-16 without a BOM
    (every other byte NUL), else None. Without this the header reads as 'i\\x00m\\x00...'."""
    head = data[:512]
    if len(head) < 4 or b"\x00" not in head:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def _missing_columns_error(path: Path, found: list[str], missing: list[str]) -> DataError:
    hints = []
    lower_found = {c.lower(): c for c in found}
    for col in missing:
        for alt in _COLUMN_HINTS.get(col, ()):
            if alt in lower_found:
                hints.append(f"rename column {lower_found[alt]!r} to {col!r}")
                break
    msg = (
        f"{path}: missing required column(s) {', '.join(missing)}. "
        f"Found columns: {', '.join(found) if found else '(none)'}. "
        f"Expected: {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}; "
        "other columns become metadata)."
    )
    if hints:
        msg += " Hint: " + "; ".join(hints) + "."
    return DataError(msg)


def _list_more(items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f"; ... and {len(items) - _MAX_LISTED} more"
    return shown


class _RowBuilder:
    """Turns raw records (dicts of column -> value) into ManifestRows, collecting problems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[ManifestRow] = []
        self.problems: list[ManifestProblem] = []
        self.bad_splits: list[str] = []
        self.n_data_rows = 0

    def skip(self, kind: str, row: int, line: int, message: str) -> None:
        self.problems.append(ManifestProblem(kind, row, line, message, "skip"))

    def add(self, record: Mapping[str, Any], row: int, line: int) -> None:
        image = _meta_value(record.get("image")).strip()
        text = _meta_value(record.get("text"))
        if not image:
            self.skip("missing_image_path", row, line, f"row {row} (line {line}): empty image path")
            return
        if not text.strip():
            self.skip("empty_text", row, line, f"row {row} (line {line}): empty text for {image}")
            return
        if "\x00" in text or "\x00" in image:
            # NUL never occurs in a report; it means binary or mis-decoded data in the cell
            self.skip("nul_byte", row, line, f"row {row} (line {line}): a NUL byte in the text or "
                      "image path (binary data, or a file in another encoding?)")
            return
        try:
            label = parse_label(record.get("label"))
        except ValueError as exc:
            self.skip("bad_label", row, line, f"row {row} (line {line}): {exc}")
            return
        missing = [x for x in label if x.lower() in MISSING_LABELS]
        if missing:
            label = [x for x in label if x.lower() not in MISSING_LABELS]
            self.problems.append(
                ManifestProblem(
                    "label_missing_value",
                    row,
                    line,
                    f"row {row} (line {line}): label {'|'.join(missing)!r} is a missing-value "
                    "marker, read as no label (write the class name, or leave the cell empty)",
                    "warning",
                )
            )
        raw_split = _meta_value(record.get("split"))
        split = normalize_split(raw_split)
        if split is None:
            self.bad_splits.append(f"row {row} (line {line}): {raw_split!r}")
            return
        # No group: the image is its own group, so leakage checks still catch an image that
        # appears in two splits.
        group = _meta_value(record.get("group")).strip() or image
        meta = {str(k): _meta_value(v) for k, v in record.items() if k not in CORE_COLUMNS}
        if isinstance(record.get("meta"), dict):  # JSONL may nest metadata under "meta"
            meta.pop("meta", None)
            meta.update({str(k): _meta_value(v) for k, v in record["meta"].items()})
        self.rows.append(ManifestRow(image, text, label, group, split, meta, row, line))

    def finish(
        self, columns: list[str], encoding: str, strict: bool, root: Path | None
    ) -> Manifest:
        if self.bad_splits:
            raise DataError(
                f"{self.path}: unknown split name(s) at {_list_more(self.bad_splits)}. "
                f"Allowed: {', '.join(SPLITS)} (aliases valid/validation/dev -> val, cal/calibration -> calib, "
                "training -> train, testing -> test; leave empty for 'unassigned')."
            )
        self._flag_duplicates()
        skips = [p for p in self.problems if p.severity == "skip"]
        if strict and skips:
            raise DataError(
                f"{self.path}: {len(skips)} unusable row(s): "
                f"{_list_more([p.message for p in skips])}. Fix them or read without strict."
            )
        manifest = Manifest(
            rows=self.rows,
            root=(root or self.path.parent).resolve(),
            path=self.path,
            columns=columns,
            problems=sorted(self.problems, key=lambda p: (p.row, p.kind)),
            n_data_rows=self.n_data_rows,
            encoding=encoding,
        )
        if skips:
            logger.warning(
                "%s: skipped %d of %d rows (%s); first: %s",
                self.path,
                len(skips),
                self.n_data_rows,
                ", ".join(f"{k}: {n}" for k, n in sorted(manifest.skipped.items())),
                skips[0].message,
            )
        return manifest

    def _flag_duplicates(self) -> None:
        # Several captions per image are legitimate, so duplicates are warnings, not skips;
        # the same image in two splits is caught by splits.check_leakage.
        first_seen: dict[str, ManifestRow] = {}
        for r in self.rows:
            key = os.path.normpath(r.image)
            if key in first_seen:
                first = first_seen[key]
                self.problems.append(
                    ManifestProblem(
                        "duplicate_image",
                        r.row,
                        r.line,
                        f"row {r.row} (line {r.line}): image {r.image} already used in "
                        f"row {first.row} (line {first.line})",
                        "warning",
                    )
                )
            else:
                first_seen[key] = r


# ----------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: str | os.PathLike[str], *, strict: bool = False) -> Manifest:
    """Read a CSV or JSONL manifest (chosen by suffix: .jsonl/.ndjson, else CSV).

    Args:
        path: the manifest file. Relative image paths are resolved against its folder.
        strict: raise `DataError` on any unusable row instead of skipping and counting it.

    Returns:
        A `Manifest` with the usable rows and the recorded problems.

    Raises:
        DataError: file missing/unreadable, missing required columns, unknown split names,
            malformed CSV, or (strict) any unusable row.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p} (expected a .csv or .jsonl file)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read manifest {p}: {exc}") from exc
    text, encoding = _decode(p, data)
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(p, text, encoding, strict)
    return _read_csv(p, text, encoding, strict)


def _read_csv(path: Path, text: str, encoding: str, strict: bool) -> Manifest:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV header: {exc}") from exc
    if not header or not any(h.strip() for h in header):
        raise _missing_columns_error(path, [], list(REQUIRED_COLUMNS))
    columns = [h.strip() for h in header]
    # Core columns match case-insensitively ("Image", "TEXT"); metadata keys keep their case.
    keys = [c.lower() if c.lower() in CORE_COLUMNS else c for c in columns]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {', '.join(dupes)} in the header")
    missing = [c for c in REQUIRED_COLUMNS if c not in keys]
    if missing:
        raise _missing_columns_error(path, columns, missing)

    builder = _RowBuilder(path)
    line_end = reader.line_num
    while True:
        start_line = line_end + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from exc
        line_end = reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # blank line: not a data row
        builder.n_data_rows += 1
        row = builder.n_data_rows
        if len(values) != len(keys):
            builder.skip(
                "malformed_row",
                row,
                start_line,
                f"row {row} (line {start_line}): {len(values)} fields, header has {len(keys)} "
                "(unquoted comma or missing field?)",
            )
            continue
        builder.add(dict(zip(keys, values, strict=True)), row, start_line)
    return builder.finish(columns, encoding, strict, None)


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice (core columns case-insensitively, as they are read)
    would silently keep the last value; refuse the row instead."""
    seen: set[str] = set()
    for k, _ in pairs:
        key = k.lower() if k.lower() in CORE_COLUMNS else k
        if key in seen:
            raise _DuplicateKeyError(f"key {k!r} appears twice in one object; keep one")
        seen.add(key)
    return dict(pairs)


def _read_jsonl(path: Path, text: str, encoding: str, strict: bool) -> Manifest:
    builder = _RowBuilder(path)
    columns: dict[str, None] = {}  # ordered set
    records: list[tuple[dict[str, Any], int, int]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        builder.n_data_rows += 1
        row = builder.n_data_rows
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKeyError as exc:
            builder.skip("duplicate_key", row, line_no, f"row {row} (line {line_no}): {exc}")
            continue
        except json.JSONDecodeError as exc:
            builder.skip(
                "bad_json", row, line_no, f"row {row} (line {line_no}): invalid JSON ({exc.msg})"
            )
            continue
        if not isinstance(obj, dict):
            builder.skip(
                "bad_json",
                row,
                line_no,
                f"row {row} (line {line_no}): expected a JSON object, got {type(obj).__name__}",
            )
            continue
        obj = {(k.lower() if k.lower() in CORE_COLUMNS else k): v for k, v in obj.items()}
        columns.update(dict.fromkeys(obj))
        records.append((obj, row, line_no))
    if records:
        # A key absent from every record is a schema problem, reported like a missing CSV column.
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise _missing_columns_error(path, list(columns), missing)
    for obj, row, line_no in records:
        builder.add(obj, row, line_no)
    return builder.finish(list(columns), encoding, strict, None)


# ----------------------------------------------------------------------------------------------
# Writing


def _as_row(item: ManifestRow | Mapping[str, Any]) -> ManifestRow:
    if isinstance(item, ManifestRow):
        return item
    d = dict(item)
    meta = dict(d.pop("meta", None) or {})
    extra = {k: v for k, v in d.items() if k not in CORE_COLUMNS}
    meta.update(extra)
    return ManifestRow(
        image=str(d.get("image", "")),
        text=str(d.get("text", "")),
        label=parse_label(d.get("label")),
        group=str(d.get("group") or ""),
        split=str(d.get("split") or UNASSIGNED),
        meta={str(k): _meta_value(v) for k, v in meta.items()},
    )


def _relative_image(image: str, root: Path) -> str:
    # Paths inside the manifest's folder are stored relative (the folder stays relocatable);
    # paths elsewhere (e.g. a read-only shared data store) stay absolute.
    p = Path(image)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return str(p)
    return p.as_posix()


def _check_row(r: ManifestRow, index: int) -> None:
    where = f"row {index} (image {r.image!r})"
    if not r.image:
        raise DataError(f"cannot write manifest: {where} has an empty image path")
    if normalize_split(r.split) is None:
        raise DataError(
            f"cannot write manifest: {where} has unknown split {r.split!r}; "
            f"allowed: {', '.join(SPLITS)} or {UNASSIGNED!r}"
        )
    for lab in r.label:
        if LABEL_SEP in lab:
            raise DataError(
                f"cannot write manifest: {where} label {lab!r} contains {LABEL_SEP!r}, "
                "the multi-label separator"
            )
    clash = [k for k in r.meta if k.lower() in CORE_COLUMNS]
    if clash:
        raise DataError(f"cannot write manifest: {where} meta keys clash with columns: {clash}")


def write_manifest(
    rows: Iterable[ManifestRow | Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Write rows to `path` as CSV (utf-8) or JSONL (suffix .jsonl/.ndjson), atomically.

    Rows may be `ManifestRow`s or dicts with the same keys (extra keys become metadata).
    Images under the manifest's folder are stored relative to it. CSV joins labels with ``|``
    and puts each meta key in its own column (first-seen order). The file is written to a
    temporary file in the same folder and moved into place, so a crash never leaves a
    half-written manifest.

    Returns:
        The path written.

    Raises:
        DataError: a row has no image path, an unknown split, a label containing ``|`` or a
            meta key that clashes with a core column.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent
    items = [_as_row(r) for r in rows]
    for i, r in enumerate(items, start=1):
        _check_row(r, i)
    meta_keys: dict[str, None] = {}
    for r in items:
        meta_keys.update(dict.fromkeys(r.meta))
    records = [
        {
            "image": _relative_image(r.image, root),
            "text": r.text,
            "label": list(r.label),
            "group": r.group,
            "split": normalize_split(r.split) or UNASSIGNED,
            **r.meta,
        }
        for r in items
    ]
    jsonl = out.suffix.lower() in (".jsonl", ".ndjson")
    buf = io.StringIO(newline="")
    if jsonl:
        for rec in records:
            buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        columns = list(CORE_COLUMNS) + list(meta_keys)
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            rec["label"] = LABEL_SEP.join(rec["label"])
            writer.writerow({k: rec.get(k, "") for k in columns})
    atomic_write_text(out, buf.getvalue())
    logger.info("wrote %d rows to %s", len(records), out)
    return out
