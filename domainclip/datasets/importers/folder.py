"""Folder-per-class importer: ``SRC/<class>/**/<image>``.

* ``label``: the class folder's name.
* ``text``: from a per-class template; ``{class}`` is replaced by the readable class name
  (`domainclip.templates.humanise`: underscores and hyphens as spaces). Default
  "a photo of {class}". Templates come as a dict or a YAML file mapping folder names to
  templates; the key ``"*"`` sets the template for classes not listed. Literal braces are
  written ``{{`` and ``}}``; any placeholder other than ``{class}`` is an error.
* ``group``: each image is its own group, unless `group_pattern` (a regular expression with
  one capture group, searched in the file name) extracts a patient / lot id, e.g.
  ``"^(P\\d+)_"`` for ``P0012_scan3.png``. Images of one group always share a split.

Files without an image suffix (``.png``, ``.jpg``, ``.dcm``, ...), empty files and files lying
directly in SRC are skipped and counted; empty class folders are warned about. Files are not
decoded here: ``domainclip data validate`` does that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.errors import ConfigError, DataError
from domainclip.io import load_yaml
from domainclip.templates import Slot, Template, humanise

logger = logging.getLogger(__name__)

KIND = "folder"
CLASS = Slot("class")
DEFAULT_TEMPLATE = Template.parse(
    "a photo of {class}", (CLASS,), source=KIND, where="default template"
)
FALLBACK_KEY = "*"


def load_templates(templates: Mapping[str, str] | str | Path | None) -> dict[str, Template]:
    """Parsed templates per class folder; a str/Path is read as a YAML file mapping class -> template.

    Raises:
        DataError: unreadable file, not a mapping of strings, or a template with a placeholder
            other than {class} (or malformed braces).
    """
    if templates is None:
        return {}
    if isinstance(templates, Mapping):
        data: object = dict(templates)
        origin = "templates"
    else:
        path = Path(templates).expanduser()
        try:
            data = load_yaml(path)
        except ConfigError as exc:  # unreadable, not YAML, or a class named twice (both lines)
            raise DataError(f"{KIND}: templates file: {exc}") from exc
        origin = str(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise DataError(
            f"{KIND}: {origin} must map class folder names to template strings, e.g. "
            '{"scratch": "a photo of a scratched {class} part", "*": "a photo of {class}"}'
        )
    return {
        k: Template.parse(v, (CLASS,), source=origin, where=f"template {k!r}", error=DataError)
        for k, v in data.items()
    }


def render_template(template: Template, class_name: str) -> str:
    """Fill ``{class}`` with the readable class name (`humanise`)."""
    return template.fill(**{CLASS.name: humanise(class_name)}).strip()


def _group_for(image: Path, pattern: re.Pattern[str] | None, rel: str, tally: Tally) -> str:
    # `rel` is the path inside SRC: a stable id that does not depend on where OUT is.
    if pattern is None:
        return rel
    m = pattern.search(image.name)
    if not m or not m.groups() or not m.group(1):
        tally.warn("no_group_match", f"{rel}: group pattern did not match; own group")
        return rel
    return m.group(1)


def _compile(group_pattern: str | None) -> re.Pattern[str] | None:
    if not group_pattern:
        return None
    try:
        pattern = re.compile(group_pattern)
    except re.error as exc:
        raise DataError(f"{KIND}: invalid group_pattern {group_pattern!r}: {exc}") from exc
    if pattern.groups < 1:
        raise DataError(
            f"{KIND}: group_pattern {group_pattern!r} needs a capture group, e.g. '^(P\\d+)_'"
        )
    return pattern


def _class_rows(
    src: Path,
    class_dir: Path,
    out: Path,
    template: Template,
    pattern: re.Pattern[str] | None,
    tally: Tally,
) -> list[ManifestRow]:
    rows = []
    for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
        rel = relative_path(path, out)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            tally.skip(
                "not_image", f"{path}: no image suffix ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
            continue
        if path.stat().st_size == 0:
            tally.skip("empty_file", f"{path}: zero bytes")
            continue
        rows.append(
            ManifestRow(
                image=rel,
                text=render_template(template, class_dir.name),
                label=[class_dir.name],
                group=_group_for(path, pattern, path.relative_to(src).as_posix(), tally),
                meta={"text_source": "template"},
            )
        )
    return rows


def import_folder(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    templates: Mapping[str, str] | str | Path | None = None,
    group_pattern: str | None = None,
) -> ImportResult:
    """Import ``SRC/<class>/...`` images into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: `src` missing or without class folders, bad templates or group pattern,
            or no usable image at all.
    """
    src = require_dir(src, KIND, "one sub-folder of images per class")
    table = load_templates(templates)
    pattern = _compile(group_pattern)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{KIND}: {src} has no class sub-folders (expected SRC/<class>/<image>)")
    for stray in sorted(p for p in src.iterdir() if p.is_file()):
        tally.skip("outside_class_folder", f"{stray}: files must be inside a class folder")
    unknown = sorted(set(table) - {d.name for d in class_dirs} - {FALLBACK_KEY})
    if unknown:
        tally.warn("template_without_folder", f"templates for missing class folders: {unknown}")
    rows: list[ManifestRow] = []
    for class_dir in class_dirs:
        template = table.get(class_dir.name, table.get(FALLBACK_KEY, DEFAULT_TEMPLATE))
        found = _class_rows(src, class_dir, out, template, pattern, tally)
        if not found:
            tally.warn("empty_class_folder", f"{class_dir}: no images")
        rows.extend(found)
    notes = []
    if pattern is None:
        notes.append(
            "no group_pattern: every image is its own group (splits cannot keep "
            "images of one patient or lot together)"
        )
    return finish_import(
        rows,
        out,
        kind=KIND,
        src=src,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        tally=tally,
        notes=notes,
    )
