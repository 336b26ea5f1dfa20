"""What manifest metadata may be shown or reported (dashboard tables, evaluation subgroups).

Conservative by design, because people look at the dashboard together (reviews, screen sharing):

* Metadata columns whose *name* looks like a direct identifier (patient, name, birth, date of
  birth, MRN, SSN, address, phone, e-mail, accession / study UID, initials, ...) are dropped
  entirely, whatever their content. Other metadata columns (view, sex, age, lot, camera, ...)
  are shown, as they are what subgroup analyses use.
* The `group` column is often a patient id (e.g. covid-cxr's ``patientid``), so groups are shown
  as stable pseudonyms (``grp-`` + 8 hex digits of a SHA-256), never as stored; filtering by
  group still works on the pseudonym.
* DICOM header tags are never read for display: images are decoded to pixels only
  (`domainclip.datasets.load_image`), thumbnails are made from those pixels.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

# Matched against the column name lower-cased with everything but letters and digits removed,
# so "Patient Name", "patient_name" and "PatientName" all become "patientname".
_IDENTIFIER_PARTS: tuple[str, ...] = (
    "patient",
    "name",
    "birth",
    "dob",
    "mrn",
    "medicalrecord",
    "ssn",
    "socialsecurity",
    "address",
    "street",
    "zip",
    "postcode",
    "postal",
    "phone",
    "email",
    "accession",
    "studyuid",
    "seriesuid",
    "sopinstance",
    "initials",
    "insurance",
    "physician",
    "doctor",
    "nhs",
)


def _normalise(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def is_identifying_column(column: str) -> bool:
    """True when a metadata column name looks like a direct identifier (see module docstring)."""
    key = _normalise(column)
    return any(part in key for part in _IDENTIFIER_PARTS)


def displayable_columns(columns: Iterable[str]) -> list[str]:
    """The metadata columns that may be shown, in their original order."""
    return [c for c in columns if not is_identifying_column(c)]


def hidden_columns(columns: Iterable[str]) -> list[str]:
    """The metadata columns withheld from display (their names only are reported)."""
    return [c for c in columns if is_identifying_column(c)]


def pseudonym(group: str) -> str:
    """Stable display pseudonym of a group id; empty stays empty."""
    if not group:
        return ""
    return "grp-" + hashlib.sha256(group.encode("utf-8")).hexdigest()[:8]
