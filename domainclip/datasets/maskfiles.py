"""Which files are masks, and which image each mask belongs to.

Pixel masks are published beside their images in a few conventional ways; importers pair them
with `pair_masks` so that a mask is never imported as an image of its own, and
`domainclip data validate` uses `is_mask_name` / `looks_like_mask` to spot masks listed as images.

Conventions (names compared case-insensitively):

* suffix: ``x_mask.png`` (also ``x-mask``, ``x_gt``) beside ``x.jpg``;
* same stem: ``x.png`` beside ``x.jpg`` when the PNG looks like a mask (single channel, at most
  one non-zero value besides 0: see `looks_like_mask`); otherwise both are images;
* mask folder: ``masks/``, ``mask/``, ``GT/``, ``gt/``, ``ground_truth/``, ``groundtruth/``
  next to the image's folder (``Class/Imgs/x.jpg`` + ``Class/masks/x.png``) or inside it
  (``Class/x.jpg`` + ``Class/GT/x_mask.png``); its files are masks, never images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MASK_SUFFIXES: tuple[str, ...] = ("_mask", "-mask", "_gt")
MASK_DIRS: frozenset[str] = frozenset(
    {"masks", "mask", "gt", "ground_truth", "groundtruth", "ground-truth"}
)
_SINGLE_CHANNEL = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "LA"})


def mask_stem(path: Path) -> str | None:
    """The image stem a mask-named file belongs to (``x_mask.png`` -> ``x``), else None."""
    stem = path.stem
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def in_mask_dir(path: Path, root: Path | None = None) -> bool:
    """True when a folder between `root` (exclusive) and the file is a mask folder."""
    parts = path.parent.parts if root is None else path.parent.relative_to(root).parts
    return any(p.lower() in MASK_DIRS for p in parts)


def is_mask_name(path: Path, root: Path | None = None) -> bool:
    """Named like a mask: a mask suffix (``*_mask.png``) or inside a mask folder."""
    return mask_stem(path) is not None or in_mask_dir(path, root)


def looks_like_mask(path: Path) -> bool:
    """Pixel content of a mask: one channel and only 0 plus at most one other value.

    Decodes the file. Unreadable files are not masks.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _SINGLE_CHANNEL:
                return False
            arr = np.asarray(img.convert("L") if img.mode in ("1", "P", "LA") else img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False
    values = np.unique(arr)
    return bool(len(values) <= 2 and values[0] == 0)


@dataclass
class Pairing:
    """Images found among some files, each with its mask (or None), and unpaired masks.

    Attributes:
        images: (image, mask or None) in sorted image order.
        orphans: files that are masks by name, folder or content but belong to no image.
        same_stem_images: PNGs beside a same-stem image that did not look like masks (kept as
            images; the caller may warn).
    """

    images: list[tuple[Path, Path | None]] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    same_stem_images: list[Path] = field(default_factory=list)


def _candidates(image: Path, masks_by_dir: dict[Path, dict[str, Path]]) -> Path | None:
    """The mask of `image`: same folder first, then sibling mask folders, then child ones."""
    stem = image.stem.lower()
    here = image.parent
    dirs = [here]
    dirs += [d for d in masks_by_dir if d.parent == here.parent and d.name.lower() in MASK_DIRS]
    dirs += [d for d in masks_by_dir if d.parent == here and d.name.lower() in MASK_DIRS]
    for d in dirs:
        found = masks_by_dir.get(d, {}).get(stem)
        if found is not None and found != image:
            return found
    return None


def pair_masks(files: Iterable[Path], root: Path) -> Pairing:
    """Split `files` (all with image suffixes, under `root`) into images with masks and orphans.

    A file is a mask candidate when it is mask-named (`is_mask_name`, folders below `root`) or
    is a PNG sharing its stem with a non-PNG image in the same folder and `looks_like_mask`.
    Every candidate is indexed by the image stem it belongs to; candidates no image claims are
    orphans.
    """
    files = sorted(files)
    by_dir_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for f in files:
        by_dir_stem[(f.parent, f.stem.lower())].append(f)
    masks: list[Path] = []
    out = Pairing()
    for f in files:
        if is_mask_name(f, root):
            masks.append(f)
        elif f.suffix.lower() == ".png" and any(
            g.suffix.lower() != ".png" for g in by_dir_stem[(f.parent, f.stem.lower())]
        ):
            (masks if looks_like_mask(f) else out.same_stem_images).append(f)
    mask_set = set(masks)
    masks_by_dir: dict[Path, dict[str, Path]] = defaultdict(dict)
    for m in masks:
        masks_by_dir[m.parent].setdefault((mask_stem(m) or m.stem).lower(), m)
    used: set[Path] = set()
    for f in files:
        if f in mask_set:
            continue
        mask = _candidates(f, masks_by_dir)
        if mask is not None:
            used.add(mask)
        out.images.append((f, mask))
    out.orphans = [m for m in masks if m not in used]
    return out
