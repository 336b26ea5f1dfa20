"""What manifest metadata may be shown or reported (dashboard tables, evaluation and audit
subgroups, reports, model cards), and how group ids are pseudonymised.

Conservative by design, because people look at the dashboard and the reports together (reviews,
screen sharing) and pass reports on:

* Metadata columns are shown **only** when their name is on a short safe list (`SAFE_COLUMNS`:
  view, sex, age, age group, site, device, split, label, modality, texture and the manifest's
  geometry columns) or the user allowed the column by name (`--show-column NAME` on `dashboard`,
  `evaluate`, `audit` and `card`). A name filter for identifiers cannot be complete (``pat_id``,
  ``subject``, ``hospital_no``, ``geburtsdatum``, ``mrn``, ``pid``, ``case_id``, ...), an allow
  list is. Withheld columns are named (never their values) so the user knows what to allow.
* The `group` column is often a patient id (e.g. covid-cxr's ``patientid``), so groups are shown
  as pseudonyms: ``grp-`` + 8 hex digits of HMAC-SHA256 keyed with a secret that lives in the
  runs directory (`pseudonym_key`; mode 0600, created once, never printed). Without the key an id
  cannot be recovered by hashing candidate ids; with the same key the same id always gets the
  same pseudonym, so filtering by group works across pages and restarts.
* DICOM header tags are never read for display: images are decoded to pixels only
  (`domainclip.datasets.load_image`), thumbnails are made from those pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from domainclip.io import fsync_path

log = logging.getLogger(__name__)

# Compared with the column name lower-cased with everything but letters and digits removed, so
# "Age Group", "age_group" and "AgeGroup" all become "agegroup". Exact matches only: "site_id"
# is not "site".
SAFE_COLUMNS: frozenset[str] = frozenset(
    {
        "view",
        "sex",
        "age",
        "agegroup",
        "site",
        "device",
        "split",
        "label",
        "modality",
        "texture",
        # manifest machinery (geometry and provenance of the text), never about a person
        "boxes",
        "mask",
        "width",
        "height",
        "textsource",
    }
)
SHOW_COLUMN_FLAG = "--show-column"
# The secret of the keyed group pseudonyms, kept in the runs directory.
KEY_FILE = ".domainclip-pseudonym-key"
_KEY_BYTES = 32


def _normalise(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def is_shown_column(column: str, allowed: Iterable[str] = ()) -> bool:
    """True when a metadata column may be shown: on `SAFE_COLUMNS` or named in `allowed`
    (compared after normalisation, so ``--show-column "Age Group"`` allows ``age_group``)."""
    key = _normalise(column)
    return key in SAFE_COLUMNS or key in {_normalise(a) for a in allowed}


def displayable_columns(columns: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """The metadata columns that may be shown, in their original order."""
    allowed = tuple(allowed)
    return [c for c in columns if is_shown_column(c, allowed)]


def hidden_columns(columns: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """The metadata columns withheld from display (their names only are reported)."""
    allowed = tuple(allowed)
    return [c for c in columns if not is_shown_column(c, allowed)]


def hidden_note(columns: Iterable[str]) -> str:
    """One sentence naming withheld columns and how to show them ("" when there are none)."""
    names = list(dict.fromkeys(columns))
    if not names:
        return ""
    listed = ", ".join(f"`{c}`" for c in names)
    return (
        f"Withheld as possibly identifying (not on the safe list of metadata columns): {listed}. "
        f"Allow one with `{SHOW_COLUMN_FLAG} NAME` if its values may be shown."
    )


def add_show_column_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--show-column NAME` (repeatable; `args.show_column`, a list) to a command."""
    parser.add_argument(
        SHOW_COLUMN_FLAG,
        action="append",
        default=[],
        metavar="NAME",
        dest="show_column",
        help="show this metadata column (its values) although it is not on the safe list "
        f"({', '.join(sorted(SAFE_COLUMNS))}); repeatable",
    )


# ------------------------------------------------------------------------------ pseudonyms


def pseudonym_key(folder: str | os.PathLike[str]) -> bytes:
    """The pseudonym secret of a runs directory (`folder`/KEY_FILE), created on first use.

    Creation is atomic and race-free: the key is written to a private temporary file (mode
    0600) and hard-linked into place, so two processes starting at once end up with the same
    key. The key is never logged or printed.

    Raises:
        OSError: the folder cannot be written and holds no key yet, or the key file is damaged.
    """
    path = Path(folder) / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise OSError(
            f"{path} is not a {_KEY_BYTES}-byte pseudonym key (damaged?); delete it to create a "
            "new one (group pseudonyms then change)"
        )
    return key


def session_key(folder: str | os.PathLike[str]) -> bytes:
    """`pseudonym_key(folder)`, or a random key for this process when the folder cannot hold
    one (read-only runs directory): pseudonyms then stay stable only until the process ends."""
    try:
        return pseudonym_key(folder)
    except OSError as exc:
        log.warning(
            "cannot keep a pseudonym key in %s (%s): group pseudonyms are stable only until this "
            "process ends",
            folder,
            exc.strerror or exc,
        )
        return secrets.token_bytes(_KEY_BYTES)


def pseudonym(group: str, key: bytes) -> str:
    """Display pseudonym of a group id under `key` (HMAC-SHA256, 8 hex digits); empty stays empty."""
    if not group:
        return ""
    return "grp-" + hmac.new(key, group.encode("utf-8"), hashlib.sha256).hexdigest()[:8]


# ------------------------------------------------------------------------------ image names

SHOW_PATHS_FLAG = "--show-paths"
# Said in every model card and audit report: nothing here looks for text in the pixels.
PIXEL_NOTE = (
    "Images may carry burned-in text (patient names, dates, accession numbers, device labels), "
    "which domainclip does not detect or remove: it never reads DICOM headers, but it does not "
    "look at the pixels for text either. Flip-example plots, dashboard thumbnails and saliency "
    "overlays reproduce the pixels as they are; check a sample of images before sharing these "
    "files, and de-identify the images themselves if they carry such text."
)
# How a single image given by path (no manifest row) is named when paths are not shown.
GIVEN_IMAGE = "(the given image)"


def image_name(row: int | None, path: str | os.PathLike[str], show_paths: bool = False) -> str:
    """How an image is named in an output file, a report or the dashboard: the one rule.

    File names at hospitals are often MRNs or accession numbers, so by default an image is named
    by its manifest row (``"row 12"``; a stable, non-identifying key that joins predictions.csv,
    scores.csv, audit.json and the explain index with the manifest). The path is written only
    when the user opted in (`--show-paths`). `row` None or 0: an image given on the command line
    (explain --image), named `GIVEN_IMAGE`.
    """
    if show_paths:
        return str(path)
    return f"row {row}" if row else GIVEN_IMAGE


def scrub_path(message: str, path: str | os.PathLike[str], name: str) -> str:
    """`message` with every mention of `path` (as given, and its file name) replaced by `name`:
    error messages of unreadable images name their file, and are written into outputs."""
    text = str(path)
    out = message.replace(text, name) if text else message
    base = Path(text).name
    return out.replace(base, name) if base else out


def add_show_paths_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--show-paths` (`args.show_paths`, a bool) to a command that writes image names."""
    parser.add_argument(
        SHOW_PATHS_FLAG,
        action="store_true",
        dest="show_paths",
        help="write image file paths into the outputs (default: manifest row numbers only, "
        "because file names often carry patient or case ids)",
    )
