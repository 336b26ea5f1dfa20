"""Folder-per-class importer: ``SRC/<class>/**/<image>``, with masks paired, never imported.

* ``label``: the class folder's name, or what the label map (`labelmap.py`, ``--label-map``)
  says for it.
* ``text``: from a per-class template; ``{class}`` is replaced by the class's words: the label
  map's ``words``, else the readable folder name (`domainclip.templates.humanise`: underscores
  and hyphens as spaces). Default "a photo of {class}". Templates come as a dict or a YAML file
  mapping folder names to templates (``--templates``); the key ``"*"`` sets the template for
  classes not listed; a label map entry's ``template`` wins over both. Literal braces are
  written ``{{`` and ``}}``; any placeholder other than ``{class}`` is an error.
* meta ``mask``: the image's pixel mask, paired by the conventions of
  `domainclip.datasets.maskfiles` (``x_mask.png`` or a same-stem ``x.png`` beside ``x.jpg``, or
  ``masks/`` / ``GT/`` / ``ground_truth/`` folders beside or inside the image's folder). Masks
  are never rows of their own; a mask no image claims stops the import (named), since it means
  the pairing or the layout is not what was assumed: delete it or ``--exclude`` it.
* ``group``: each image is its own group, unless `group_pattern` (a regular expression with
  one capture group, searched in the file name) extracts a patient / lot id, e.g.
  ``"^(P\\d+)_"`` for ``P0012_scan3.png``. Images of one group always share a split.

`include` / `exclude`: shell-style patterns (`fnmatch`, case-sensitive; ``*`` also crosses
``/``) matched against each file's path relative to SRC, e.g. ``"*/Imgs/*"`` or
``"MT_Free/*"``; with `include`, only matching files are read; excluded files are counted.
Files without an image suffix (``.png``, ``.jpg``, ``.dcm``, ...), empty files and files lying
directly in SRC are skipped and counted; empty class folders are warned about. Images are not
decoded here (same-stem PNGs are, to tell masks from images): ``domainclip data validate`` does.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.importers.labelmap import (
    LabelEntry,
    check_folders,
    load_label_map,
)
from domainclip.datasets.manifest import ManifestRow
from domainclip.datasets.maskfiles import pair_masks
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


@dataclass(frozen=True)
class _Filter:
    """include / exclude patterns over paths relative to SRC."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def keeps(self, rel: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(rel, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(rel, p) for p in self.exclude)


@dataclass(frozen=True)
class _ClassSpec:
    """One class folder: its label entry and template."""

    folder: Path
    entry: LabelEntry
    template: Template


def _image_files(src: Path, class_dir: Path, keep: _Filter, tally: Tally) -> list[Path]:
    """Files under `class_dir` that pass the filter, have an image suffix and are not empty."""
    found = []
    for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
        if not keep.keeps(path.relative_to(src).as_posix()):
            tally.skipped["excluded"] += 1
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            tally.skip(
                "not_image", f"{path}: no image suffix ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
            continue
        if path.stat().st_size == 0:
            tally.skip("empty_file", f"{path}: zero bytes")
            continue
        found.append(path)
    return found


def _class_rows(
    src: Path,
    spec: _ClassSpec,
    out: Path,
    pattern: re.Pattern[str] | None,
    keep: _Filter,
    tally: Tally,
) -> tuple[list[ManifestRow], list[Path]]:
    """Rows of one class folder, and the masks in it that no image claims."""
    pairing = pair_masks(_image_files(src, spec.folder, keep, tally), src)
    for p in pairing.same_stem_images:
        tally.warn("same_stem_image", f"{p}: shares its stem with another image but is no mask")
    text = spec.template.fill(**{CLASS.name: spec.entry.words}).strip()
    rows = []
    for path, mask in pairing.images:
        meta = {"text_source": "template"}
        if mask is not None:
            meta["mask"] = relative_path(mask, out)
        rows.append(
            ManifestRow(
                image=relative_path(path, out),
                text=text,
                label=[spec.entry.label],
                group=_group_for(path, pattern, path.relative_to(src).as_posix(), tally),
                meta=meta,
            )
        )
    return rows, pairing.orphans


def _orphan_error(src: Path, orphans: Sequence[Path]) -> DataError:
    shown = ", ".join(str(p.relative_to(src)) for p in orphans[:5])
    more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
    return DataError(
        f"{KIND}: {len(orphans)} mask file(s) in {src} belong to no image: {shown}{more}. A mask "
        "pairs with the image of the same stem (x.jpg + x_mask.png or a mask-like x.png beside "
        "it, or x.png in a masks/ or GT/ folder beside or inside the image's folder). Restore "
        "the missing images, or leave the masks out with --exclude PATTERN."
    )


def _class_specs(
    src: Path,
    templates: Mapping[str, str] | str | Path | None,
    label_map: Mapping[str, object] | str | Path | None,
    tally: Tally,
) -> list[_ClassSpec]:
    """The class folders of SRC with their labels and templates (label map checked)."""
    table = load_templates(templates)
    labels = load_label_map(KIND, label_map)
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{KIND}: {src} has no class sub-folders (expected SRC/<class>/<image>)")
    names = {d.name for d in class_dirs}
    check_folders(KIND, labels, names, src)
    unknown = sorted(set(table) - names - {FALLBACK_KEY})
    if unknown:
        tally.warn("template_without_folder", f"templates for missing class folders: {unknown}")
    specs = []
    for d in class_dirs:
        entry = labels.get(d.name, LabelEntry.default(d.name))
        template = table.get(d.name, table.get(FALLBACK_KEY, DEFAULT_TEMPLATE))
        if entry.template is not None:
            template = Template.parse(
                entry.template, (CLASS,), source=f"{KIND} label map",
                where=f"template of {d.name!r}", error=DataError,
            )
        specs.append(_ClassSpec(d, entry, template))
    return specs


def import_folder(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    templates: Mapping[str, str] | str | Path | None = None,
    group_pattern: str | None = None,
    label_map: Mapping[str, object] | str | Path | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> ImportResult:
    """Import ``SRC/<class>/...`` images into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: `src` missing or without class folders, bad templates, label map or group
            pattern, a label map naming a folder SRC lacks, masks that belong to no image, or
            no usable image at all.
    """
    src = require_dir(src, KIND, "one sub-folder of images per class")
    pattern = _compile(group_pattern)
    keep = _Filter(tuple(include or ()), tuple(exclude or ()))
    tally = Tally()
    specs = _class_specs(src, templates, label_map, tally)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stray in sorted(p for p in src.iterdir() if p.is_file()):
        tally.skip("outside_class_folder", f"{stray}: files must be inside a class folder")
    rows: list[ManifestRow] = []
    orphans: list[Path] = []
    for spec in specs:
        found, lost = _class_rows(src, spec, out, pattern, keep, tally)
        orphans += lost
        if not found and not lost:
            tally.warn("empty_class_folder", f"{spec.folder}: no images")
        rows.extend(found)
    if orphans:
        raise _orphan_error(src, orphans)
    if tally.skipped["excluded"]:
        logger.info("%s: %d file(s) left out by include/exclude", KIND, tally.skipped["excluded"])
    n_masks = sum(1 for r in rows if "mask" in r.meta)
    notes = [f"{n_masks} of {len(rows)} images have a paired mask (meta column 'mask')"] if n_masks else []
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
        calib_frac=calib_frac,
        tally=tally,
        notes=notes,
    )
