"""Label maps: source folder name -> the label written to the manifest and the words used for it.

A label map is a YAML file (read with `domainclip.io.load_yaml`) or a dict. Each key is a folder
name exactly as on disk; its value is either the label (short form) or a mapping::

    MT_Blowhole: blowhole              # short form: label "blowhole", worded "blowhole"
    MT_Free:
      label: good                      # the manifest's label for this folder's images
      words: defect-free magnetic tile # the wording in texts (default: the label as words)
      template: "a photo of a {class}" # folder importer: this folder's template ({class} = words)
    broken_large:                      # mvtec importer: a defect folder
      label: broken
      words: large break               # "two small large breaks ..." -> "a large break ..."

Keys other than label / words / template are errors, as are folders the map names that the
source does not have (each importer checks that and lists the folders it found). Folders the
map does not name keep their own name as label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from domainclip.datasets.manifest import LABEL_SEP
from domainclip.errors import ConfigError, DataError
from domainclip.io import load_yaml
from domainclip.templates import humanise

_KEYS = ("label", "words", "template")


@dataclass(frozen=True)
class LabelEntry:
    """How one source folder is labelled and worded.

    Attributes:
        label: the manifest label.
        words: the readable wording (fills `{class}`; names the finding in mask descriptions).
        template: a template text for this folder only (folder importer), or None.
    """

    label: str
    words: str
    template: str | None = None

    @classmethod
    def default(cls, folder: str) -> LabelEntry:
        """A folder the map does not name: its own name, as words."""
        return cls(label=folder, words=humanise(folder))


def _entry(kind: str, origin: str, folder: str, value: object) -> LabelEntry:
    where = f"{kind}: label map {origin}, entry {folder!r}"
    if isinstance(value, str):
        value = {"label": value}
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: expected a label or a mapping with {', '.join(_KEYS)}")
    unknown = sorted(str(k) for k in value if k not in _KEYS)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_KEYS)}")
    bad = [k for k in _KEYS if k in value and not isinstance(value[k], str)]
    if bad:
        raise DataError(f"{where}: {', '.join(bad)} must be text")
    label = str(value.get("label") or folder).strip()
    if not label or LABEL_SEP in label:
        raise DataError(f"{where}: label {label!r} must be non-empty and without {LABEL_SEP!r}")
    words = str(value.get("words") or humanise(label)).strip()
    return LabelEntry(label=label, words=words, template=value.get("template"))


def load_label_map(kind: str, label_map: Mapping[str, object] | str | Path | None) -> dict[str, LabelEntry]:
    """Parse a label map (dict, or a YAML file path) into folder name -> `LabelEntry`.

    Raises:
        DataError: unreadable / non-YAML file, not a mapping, an unknown key, a non-text value
            or an empty label; the message names the file and the entry.
    """
    if label_map is None:
        return {}
    if isinstance(label_map, Mapping):
        data: object = dict(label_map)
        origin = "(dict)"
    else:
        path = Path(label_map).expanduser()
        try:
            data = load_yaml(path)
        except ConfigError as exc:
            raise DataError(f"{kind}: label map: {exc}") from exc
        origin = str(path)
    if not isinstance(data, dict):
        raise DataError(
            f"{kind}: label map {origin} must map folder names to labels, e.g. "
            "'MT_Free: {label: good, words: defect-free tile}'"
        )
    return {str(k): _entry(kind, origin, str(k), v) for k, v in data.items()}


def check_folders(kind: str, table: Mapping[str, LabelEntry], found: set[str], where: Path) -> None:
    """Raise when the map names folders `where` does not have (listing the ones it has)."""
    missing = sorted(set(table) - found)
    if missing:
        raise DataError(
            f"{kind}: the label map names folder(s) {', '.join(missing)} that {where} does not "
            f"have; folders found: {', '.join(sorted(found)) or '(none)'}. Fix the names (they "
            "are matched exactly, case included) or remove those entries."
        )
