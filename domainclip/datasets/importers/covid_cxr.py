"""COVID-19 image data collection importer (Cohen et al.): ``SRC/metadata.csv`` + ``SRC/images/``.

One row per X-ray row of ``metadata.csv`` whose image file exists:

* ``text``: the row's ``clinical_notes`` with whitespace collapsed (meta
  ``text_source="clinical_notes"``). When the notes are empty, a sentence built from the view
  and the finding, e.g. "Chest x-ray, PA view. Finding: Streptococcus." (meta
  ``text_source="finding_template"``). Template texts state the label outright and many notes
  name COVID-19 too: text-to-image retrieval on this set partly measures reading the label from
  the text. Evaluate with that in mind (filter on ``text_source`` to compare).
* ``label``: ``finding`` split on commas ("COVID-19, ARDS" -> ["COVID-19", "ARDS"]).
* ``group``: ``patientid``, so all images of a patient stay in one split. The published table
  lists a few image files under two patient ids; those patients are merged into one group
  (e.g. "285+339") so the same image can never sit in two splits.
* meta: view, sex, age, modality, offset, license, doi (as published; empty when unknown).

Rows of other modalities (CT) are skipped and counted as ``not_xray``; rows whose image file is
absent are skipped and counted as ``missing_image`` (14 in the published June 2020 copy).

The file is read as UTF-8 when it is valid UTF-8, otherwise byte by byte falling back to
Windows-1252 / latin-1 for the undecodable bytes (the table has been published in both forms).
Characters already lost upstream (U+FFFD) are kept as they are and counted in the notes.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from domainclip.datasets.importers._common import (
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

KIND = "covid-cxr"
METADATA = "metadata.csv"
REQUIRED = ("patientid", "finding", "filename")
META_COLUMNS = ("view", "sex", "age", "modality", "offset", "license", "doi")
_WS = re.compile(r"\s+")
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_VIEW_NAMES = {"L": "lateral", "AP Supine": "AP supine"}


def decode_mixed(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, repairing bytes that are not UTF-8 as Windows-1252 (latin-1 where 1252 has
    no character). Returns the text and the number of repaired bytes."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", errors="surrogateescape")

    def repair(m: re.Match[str]) -> str:
        byte = bytes([ord(m.group()) - 0xDC00])
        try:
            return byte.decode("cp1252")
        except UnicodeDecodeError:
            return byte.decode("latin-1")

    repaired, n = _UNDECODABLE.subn(repair, text)
    return repaired, n


def clean_text(text: str) -> str:
    """Collapse runs of whitespace (newlines, thin spaces) into single spaces."""
    return _WS.sub(" ", text).strip()


def parse_finding(finding: str) -> list[str]:
    """``"COVID-19, ARDS"`` -> ``["COVID-19", "ARDS"]`` (stripped, empty parts dropped)."""
    return [p.strip() for p in finding.split(",") if p.strip()]


def finding_sentence(view: str, labels: list[str]) -> str:
    """Fallback text for rows without notes, e.g. "Chest x-ray, PA view. Finding: SARS."."""
    v = view.strip()
    where = f"Chest x-ray, {_VIEW_NAMES.get(v, v)} view." if v else "Chest x-ray."
    if not labels:
        return f"{where} Finding not recorded."
    noun = "Finding" if len(labels) == 1 else "Findings"
    return f"{where} {noun}: {', '.join(labels)}."


def _read_table(path: Path) -> tuple[list[dict[str, str]], list[str], int]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{KIND}: cannot read {path}: {exc}") from exc
    text, repaired = decode_mixed(data)
    if repaired:
        logger.warning("%s: %d bytes were not UTF-8; read them as Windows-1252", path, repaired)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise DataError(f"{KIND}: {path} is not a readable CSV file: {exc}") from exc
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"{KIND}: {path} lacks column(s) {', '.join(missing)}. Found: "
            f"{', '.join(columns) or '(none)'}. Expected at least {', '.join(REQUIRED)} "
            f"(and clinical_notes, view, modality, {', '.join(META_COLUMNS[1:])})."
        )
    records = [{(k or "").strip(): (v or "") for k, v in r.items()} for r in records]
    return records, columns, repaired


def _merged_groups(records: list[dict[str, str]]) -> dict[str, str]:
    """patientid -> group id, merging patients that share an image file (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_patient: dict[str, str] = {}
    for r in records:
        pid, fname = r["patientid"].strip(), r["filename"].strip()
        if not pid:
            continue
        find(pid)
        if fname in first_patient:
            a, b = find(first_patient[fname]), find(pid)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_patient[fname] = pid
    members: dict[str, list[str]] = {}
    for pid in parent:
        members.setdefault(find(pid), []).append(pid)
    return {
        pid: "+".join(sorted(group, key=_natural)) for group in members.values() for pid in group
    }


def _natural(s: str) -> tuple[int, str]:
    return (int(s), s) if s.isdigit() else (1 << 62, s)


def _row(
    r: dict[str, str], line: int, src: Path, out: Path, groups: dict[str, str], tally: Tally
) -> ManifestRow | None:
    modality = r.get("modality", "").strip()
    if modality and modality.lower().replace("-", "") != "xray":
        tally.skip("not_xray", f"line {line}: modality {modality!r}")
        return None
    fname = r["filename"].strip()
    folder = r.get("folder", "").strip() or "images"
    image = src / folder / fname
    if not fname or not image.is_file():
        tally.skip("missing_image", f"line {line}: image file {image} not found")
        return None
    labels = parse_finding(r["finding"])
    if not labels:
        tally.warn("empty_finding", f"line {line} ({fname}): empty finding; label left empty")
    pid = r["patientid"].strip()
    if not pid:
        tally.warn("no_patientid", f"line {line} ({fname}): no patientid; image is its own group")
    notes = clean_text(r.get("clinical_notes", ""))
    meta = {c: r.get(c, "").strip() for c in META_COLUMNS}
    meta["text_source"] = "clinical_notes" if notes else "finding_template"
    return ManifestRow(
        image=relative_path(image, out),
        text=notes or finding_sentence(r.get("view", ""), labels),
        label=labels,
        group=groups.get(pid, pid) if pid else f"image:{fname}",
        meta=meta,
    )


def import_covid_cxr(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
) -> ImportResult:
    """Import the collection in `src` into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: no metadata.csv, required columns missing, or no usable row.
    """
    src = require_dir(src, KIND, f"{METADATA} and the images/ folder")
    table = src / METADATA
    if not table.is_file():
        raise DataError(f"{KIND}: {table} not found (expected {METADATA} beside images/)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, _, repaired = _read_table(table)
    groups = _merged_groups(records)
    tally = Tally()
    rows: list[ManifestRow] = []
    for line, r in enumerate(records, start=2):  # line 1 is the header
        row = _row(r, line, src, out, groups, tally)
        if row is not None:
            rows.append(row)
    merged = sorted({g for g in groups.values() if "+" in g}, key=_natural)
    notes = _notes(rows, merged, repaired)
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


def _notes(rows: list[ManifestRow], merged: list[str], repaired: int) -> list[str]:
    n_template = sum(r.meta["text_source"] == "finding_template" for r in rows)
    notes = [
        f"{n_template} of {len(rows)} rows have no clinical notes; their text is a sentence "
        "built from the finding (text_source=finding_template) and states the label",
    ]
    lost = sum(r.text.count("\ufffd") for r in rows)
    if lost:
        notes.append(f"{lost} characters in the notes were already lost upstream (U+FFFD)")
    if repaired:
        notes.append(f"{repaired} non-UTF-8 bytes were read as Windows-1252")
    if merged:
        notes.append(
            "patients sharing an image file were merged into one group: " + ", ".join(merged)
        )
    return notes
