"""MVTec-AD-style importer: anomaly-detection folders with pixel masks.

Layout (one category; SRC may also hold several such category folders, as the MVTec-AD
release does)::

    SRC/train/good/*.png                 defect-free training images
    SRC/test/good/*.png                  defect-free test images
    SRC/test/<defect>/*.png              defective images, one folder per defect type
    SRC/ground_truth/<defect>/<stem>_mask.png   their masks (``<stem>.png`` is accepted too)

Each image becomes one row:

* ``label``: ``good`` or the defect folder's name (a label map, ``--label-map``, renames them:
  `labelmap.py`; ``good`` can be renamed too).
* ``text``: defective images are described from their mask by `describe_mask` (count, size and
  position of the mask's regions on a 3x3 grid, relative to the image), e.g. "a small crack in
  the centre of a hazelnut"; the surface is the category folder's name as words. Good images:
  "a defect-free hazelnut". A defective image without a mask (or with an empty one) gets
  "a hazelnut with a crack", counted as a warning. Defect names are worded by the label map's
  ``words``, else a few built-in wordings (``broken_large`` -> "break": the mask gives the size),
  else the folder name as words.
* meta ``mask`` (path relative to OUT), ``category``, ``source_split`` (MVTec's own folder:
  train / test) and ``text_source`` (describe_mask | clean_template | template).
* ``group``: the image itself (MVTec records no lot or part id); image and mask share a row, so
  they can never be split apart.

Splits (``splits``): MVTec's own train folder holds only good images, so a model trained on it
never sees a defect. ``"pool"`` (default) pools both folders and assigns group-aware splits
stratified by label, so every split holds good and defective images. ``"keep"`` keeps MVTec's
protocol: ``train/good`` is the train split, and the test folder is divided into val and test
(group-aware, stratified by defect type) in the ratio val_frac : test_frac; use it to compare
with published anomaly-detection numbers. ``source_split`` records the origin either way.

A mask in ground_truth/ that belongs to no test image stops the import, naming it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from domainclip.datasets.describe import describe_mask
from domainclip.datasets.imageio import ImageReadError, load_mask, read_image_size
from domainclip.datasets.importers._common import (
    IMAGE_SUFFIXES,
    ImportResult,
    Tally,
    finish_import,
    relative_path,
    require_dir,
)
from domainclip.datasets.importers.labelmap import LabelEntry, check_folders, load_label_map
from domainclip.datasets.manifest import ManifestRow
from domainclip.datasets.maskfiles import mask_stem
from domainclip.errors import DataError
from domainclip.templates import humanise

logger = logging.getLogger(__name__)

KIND = "mvtec"
GOOD = "good"
SPLIT_MODES = ("pool", "keep")
_LAYOUT = (
    "train/good/, test/good/, test/<defect>/ and ground_truth/<defect>/<image>_mask.png, in SRC "
    "or in each category folder of SRC"
)
# Defect folder names that read badly as words; the mask supplies the size, so no "large".
_WORDS: Mapping[str, str] = {
    "broken_large": "break",
    "broken_small": "break",
    "broken": "break",
    "color": "colour defect",
    "combined": "combined defect",
    "gray_stroke": "grey stroke",
}


@dataclass(frozen=True)
class _Source:
    """One image to import: where it is, its folder names and its mask (if any)."""

    image: Path
    category: Path
    source_split: str
    defect: str
    mask: Path | None


def _categories(src: Path) -> list[Path]:
    """SRC itself when it is a category, else its sub-folders that are."""

    def is_category(p: Path) -> bool:
        return (p / "test").is_dir() or (p / "train").is_dir()

    if is_category(src):
        return [src]
    found = sorted(p for p in src.iterdir() if p.is_dir() and is_category(p))
    if not found:
        raise DataError(f"{KIND}: {src} has no train/ or test/ folder (expected {_LAYOUT})")
    return found


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _masks(category: Path, defect: str) -> dict[str, Path]:
    """ground_truth/<defect>/ masks by the image stem they belong to."""
    folder = category / "ground_truth" / defect
    if not folder.is_dir():
        return {}
    return {(mask_stem(m) or m.stem): m for m in _images(folder)}


def _sources(category: Path, tally: Tally) -> tuple[list[_Source], list[Path]]:
    """Every image of a category with its mask, and the masks no image claims."""
    out: list[_Source] = []
    orphans: list[Path] = []
    for split in ("train", "test"):
        root = category / split
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            masks = _masks(category, folder.name) if folder.name != GOOD else {}
            images = _images(folder)
            stems = {p.stem for p in images}
            orphans += [m for s, m in sorted(masks.items()) if s not in stems]
            for image in images:
                out.append(_Source(image, category, split, folder.name, masks.get(image.stem)))
            if not images:
                tally.warn("empty_folder", f"{folder}: no images")
    gt = category / "ground_truth"
    if gt.is_dir():
        known = {p.name for p in (category / "test").glob("*") if p.is_dir()}
        for folder in sorted(p for p in gt.iterdir() if p.is_dir() and p.name not in known):
            orphans += _images(folder)
    return out, orphans


def _text(s: _Source, entry: LabelEntry, surface: str, tally: Tally) -> tuple[str, str]:
    """(text, text_source) for one image."""
    if s.defect == GOOD:
        return f"a defect-free {surface}", "clean_template"
    fallback = f"a {surface} with {'an' if entry.words[:1] in 'aeiou' else 'a'} {entry.words}"
    if s.mask is None:
        tally.warn("no_mask", f"{s.image}: no mask in ground_truth/{s.defect}/")
        return fallback, "template"
    try:
        mask = load_mask(s.mask)
        width, height = read_image_size(s.image)
    except ImageReadError as exc:
        tally.warn("mask_unreadable", str(exc))
        return fallback, "template"
    if mask.shape != (height, width):
        tally.warn("mask_size", f"{s.mask}: {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
    text = describe_mask(entry.words, mask, surface=surface)
    if text is None:
        tally.warn("empty_mask", f"{s.mask}: no marked pixel")
        return fallback, "template"
    return text, "describe_mask"


def _row(s: _Source, entry: LabelEntry, out: Path, src: Path, tally: Tally) -> ManifestRow:
    surface = humanise(s.category.name)
    text, how = _text(s, entry, surface, tally)
    meta = {"category": s.category.name, "source_split": s.source_split, "text_source": how}
    if s.mask is not None:
        meta["mask"] = relative_path(s.mask, out)
    return ManifestRow(
        image=relative_path(s.image, out),
        text=text,
        label=[entry.label],
        group=s.image.relative_to(src).as_posix(),
        meta=meta,
    )


def _keep_splits(rows: list[ManifestRow], val_frac: float, test_frac: float, seed: int) -> list[ManifestRow]:
    """MVTec's protocol: its train folder -> train; its test folder divided into val and test."""
    from domainclip.datasets.splits import assign_splits

    train = [dataclasses.replace(r, split="train") for r in rows if r.meta["source_split"] == "train"]
    test = [r for r in rows if r.meta["source_split"] == "test"]
    if val_frac <= 0 or test_frac <= 0:
        name = "val" if test_frac <= 0 and val_frac > 0 else "test"
        return train + [dataclasses.replace(r, split=name) for r in test]
    share = test_frac / (val_frac + test_frac)
    divided = assign_splits(test, val_frac=0.0, test_frac=share, seed=seed)
    return train + [
        dataclasses.replace(r, split="val") if r.split == "train" else r for r in divided
    ]


def import_mvtec(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    label_map: Mapping[str, object] | str | Path | None = None,
    splits: str = "pool",
) -> ImportResult:
    """Import an MVTec-AD-style folder into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: SRC missing or not in the layout, a bad label map or one naming a folder that
            no category has, an unknown `splits` mode, masks without an image, no image at all.
    """
    src = require_dir(src, KIND, _LAYOUT)
    if splits not in SPLIT_MODES:
        raise DataError(f"{KIND}: splits must be one of {', '.join(SPLIT_MODES)}, got {splits!r}")
    if splits == "keep" and calib_frac > 0:
        raise DataError(
            f"{KIND}: --calib-frac needs --splits pool (with keep, train/ holds only defect-free "
            "images and test/ is divided into val and test); import with --splits pool, or set the "
            "split column of the rows you want as calib to `calib` in the manifest"
        )
    labels = load_label_map(KIND, label_map)
    tally = Tally()
    sources: list[_Source] = []
    orphans: list[Path] = []
    categories = _categories(src)
    for category in categories:
        found, lost = _sources(category, tally)
        sources += found
        orphans += lost
    if orphans:
        shown = ", ".join(str(p.relative_to(src)) for p in orphans[:5])
        raise DataError(
            f"{KIND}: {len(orphans)} mask(s) in ground_truth/ belong to no test image: {shown}"
            f"{' ...' if len(orphans) > 5 else ''}. Each ground_truth/<defect>/<stem>_mask.png "
            "needs test/<defect>/<stem>.<ext>; restore the images or remove the masks."
        )
    check_folders(KIND, labels, {s.defect for s in sources}, src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = {
        d: labels.get(d) or LabelEntry(d, _WORDS.get(d, humanise(d))) for d in {s.defect for s in sources}
    }
    rows = [_row(s, entries[s.defect], out, src, tally) for s in sources]
    notes = [
        f"{len(categories)} categor{'y' if len(categories) == 1 else 'ies'}; "
        f"{sum(s.mask is not None for s in sources)} masks; every image is its own group",
        "splits: MVTec train/ and test/ pooled, then split by group and label (--splits keep: "
        "train/good is train, test/ is divided into val and test)"
        if splits == "pool"
        else "splits: MVTec's train/good is train; its test/ is divided into val and test",
    ]
    if splits == "keep" and rows:
        rows = _keep_splits(rows, val_frac, test_frac, seed)
    return finish_import(
        rows, out, kind=KIND, src=src, seed=seed, val_frac=val_frac, test_frac=test_frac,
        calib_frac=calib_frac, tally=tally, notes=notes,
    )
