"""NEU-DET importer: a preset of the VOC importer (`voc.py`) for ``SRC/IMAGES/*.jpg`` with
Pascal VOC boxes in ``SRC/ANNOTATIONS/*.xml``.

Each image becomes one row; everything not listed here follows the VOC importer and the box
rules of `domainclip.datasets.importers._boxes` (boxes in real image pixels, clipping, skips):

* ``label``: the image's class. NEU-DET is published as 6 classes x 300 images and the file
  name prefix (``crazing_12.jpg``) is that class. About 7% of the XML files also contain boxes of
  a second class (e.g. inclusions inside a ``patches`` image); the label stays the image's class
  (the XML class that matches the prefix), and ``multi_label=True`` appends the other classes.
  When no XML class matches the prefix, the class with the most boxes wins and the mismatch
  is counted as a warning. An object without a name takes the prefix class.
* ``text``: written from the boxes by `describe_objects` (count, size, position) ending in
  "a steel surface", so it says only what the annotation supports.
* ``group``: the image id. NEU-DET records no strip, coil or lot, so images cut from the same
  steel strip can land in different splits; scores on NEU-DET may be optimistic for that reason.

Images are not copied: the manifest refers to them relative to the output folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from domainclip.datasets.importers._boxes import Obj, box_settings, primary_class
from domainclip.datasets.importers._common import ImportResult, Tally, require_dir
from domainclip.datasets.importers.voc import VocPreset, find_subdir, import_voc_layout

KIND = "neu-det"
SURFACE = "steel surface"
_LAYOUT = "IMAGES/*.jpg and ANNOTATIONS/*.xml (Pascal VOC), as in the NEU-DET release"


def _prefix_class(image: Path) -> str:
    """``rolled-in_scale_12.jpg`` -> ``"rolled-in_scale"`` (the class part of a NEU-DET name)."""
    head, _, tail = image.stem.rpartition("_")
    return head if head and tail.isdigit() else image.stem


def _primary(objects: list[Obj], image: Path, tally: Tally) -> str:
    """The file name's class when it is boxed, else the most boxes (counted as a mismatch)."""
    prefix = _prefix_class(image)
    counts = Counter(cls for cls, _ in objects)
    if prefix in counts:
        return prefix
    winner = primary_class(objects)
    tally.warn(
        "class_name_mismatch",
        f"{image.name}: file name says {prefix!r} but the boxes are {dict(counts)}; using {winner!r}",
    )
    return winner


PRESET = VocPreset(
    kind=KIND,
    layout=_LAYOUT,
    name_fallback=_prefix_class,
    primary=_primary,
    notes=[
        "group = image id: NEU-DET records no strip or lot, so near-duplicate crops of one "
        "strip may fall into different splits",
        "label = the class in the file name (the boxes' majority class when the file name's "
        "class is not boxed); the text describes every box",
    ],
)


def import_neu_det(
    src: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    multi_label: bool = False,
    outside: str | None = None,
) -> ImportResult:
    """Import NEU-DET from `src` into ``out/manifest.csv`` (see the module docstring).

    Raises:
        DataError: `src` lacks IMAGES/ or ANNOTATIONS/, or no image could be imported.
    """
    src = require_dir(src, KIND, _LAYOUT)
    images_dir = find_subdir(src, ("IMAGES",), KIND, _LAYOUT)
    ann_dir = find_subdir(src, ("ANNOTATIONS",), KIND, _LAYOUT)
    settings = box_settings(KIND, surface=SURFACE, multi_label=multi_label, outside=outside)
    return import_voc_layout(
        src,
        out,
        images_dir,
        ann_dir,
        settings,
        PRESET,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        calib_frac=calib_frac,
    )
