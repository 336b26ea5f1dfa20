"""Importers: turn a data set in its published layout into ``OUT/manifest.csv``.

Kinds (``domainclip data import KIND SRC --out OUT``):

* ``neu-det``: NEU-DET steel defects (IMAGES/, ANNOTATIONS/ VOC XML); a preset of ``voc``.
* ``voc``: Pascal VOC XML boxes (JPEGImages/ or images/, Annotations/); texts from the boxes.
* ``coco``: a COCO JSON (images, annotations with bbox [x, y, w, h], categories).
* ``yolo``: one ``class cx cy w h`` .txt per image (images/, labels/) and classes.txt/data.yaml.
* ``deeppcb``: DeepPCB boards (``<id>_test.jpg`` + defect-free ``<id>_temp.jpg``, ``x1 y1 x2 y2
  type`` .txt); templates become defect-free rows in their board's group.
* ``covid-cxr``: the COVID-19 chest X-ray collection (metadata.csv, images/).
* ``folder``: one folder per class, optional per-class text templates and a label map, include /
  exclude patterns; masks beside the images (``x_mask.png``, ``masks/``, ``GT/``) are paired.
* ``mvtec``: MVTec-AD-style anomaly folders (train/good, test/<defect>, ground_truth/ masks);
  texts from the masks.
* ``synthetic``: generated metal-surface defects with exact masks and boxes (no SRC; used by the
  demo); square or any size or mix of aspect ratios, defect sizes relative or in pixels.

Real data sets are never copied: image paths in the manifest are relative to OUT and point at
the source. Splits are group-aware and stratified (`domainclip.datasets.splits`), and every
import checks that no group spans two splits before writing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domainclip.datasets.importers._common import MANIFEST_NAME, ImportResult
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["IMPORTERS", "MANIFEST_NAME", "ImportResult", "importer_options", "run_import"]


def _neu_det(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.neu_det import import_neu_det

    return import_neu_det(src, out, **kw)


def _voc(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.voc import import_voc

    return import_voc(src, out, **kw)


def _coco(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.coco import import_coco

    return import_coco(src, out, **kw)


def _yolo(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.yolo import import_yolo

    return import_yolo(src, out, **kw)


def _deeppcb(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.deeppcb import import_deeppcb

    return import_deeppcb(src, out, **kw)


def _covid_cxr(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.covid_cxr import import_covid_cxr

    return import_covid_cxr(src, out, **kw)


def _folder(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.folder import import_folder

    return import_folder(src, out, **kw)


def _mvtec(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.mvtec import import_mvtec

    return import_mvtec(src, out, **kw)


def _synthetic(src: Path | None, out: Path, **kw: Any) -> ImportResult:
    from domainclip.datasets.importers.synthetic import generate_synthetic

    if src is not None:
        raise DataError(
            f"synthetic: takes no source folder (got {src}); it generates its images into OUT"
        )
    return generate_synthetic(out, **kw)


# Options every box importer (voc, coco, yolo) takes; `_boxes.BoxSettings` documents them.
_BOX_OPTIONS = (
    "surface",
    "multi_label",
    "outside",
    "empty_label",
    "empty_text",
    "group_pattern",
    "images",
)

# kind -> (runner, options it accepts beyond seed/val_frac/test_frac). Fixed; never mutated.
IMPORTERS: dict[str, tuple[Callable[..., ImportResult], tuple[str, ...]]] = {
    "neu-det": (_neu_det, ("multi_label", "outside")),
    "covid-cxr": (_covid_cxr, ()),
    "folder": (_folder, ("templates", "group_pattern", "label_map", "include", "exclude")),
    "synthetic": (
        _synthetic,
        ("n", "size", "classes", "width", "height", "aspects", "defect_size"),
    ),
    "mvtec": (_mvtec, ("label_map", "splits")),
    "voc": (_voc, (*_BOX_OPTIONS, "annotations")),
    "coco": (_coco, (*_BOX_OPTIONS, "annotations")),
    "yolo": (_yolo, (*_BOX_OPTIONS, "labels", "class_names")),
    "deeppcb": (_deeppcb, ("multi_label", "outside", "empty_label", "empty_text", "group_by")),
}


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value}")


def run_import(
    kind: str,
    src: Path | None,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    calib_frac: float = 0.0,
    **options: Any,
) -> ImportResult:
    """Import data set `kind` from `src` into ``out/manifest.csv``.

    Args:
        kind: one of ``IMPORTERS`` ("neu-det", "covid-cxr", "folder", "synthetic", "mvtec",
            "voc", "coco", "yolo", "deeppcb");
            underscores are accepted for hyphens.
        src: the data set's folder (None for "synthetic").
        out: output folder; created if needed.
        seed: seed for the split assignment (and the synthetic generator).
        val_frac, test_frac: fractions of rows (by group) for validation and test.
        calib_frac: fraction of rows (by group) for a `calib` split: held out for conformal
            thresholds only (default 0: no calib split).
        **options: kind-specific options (``IMPORTERS`` lists them: neu-det: multi_label,
            outside; folder: templates, group_pattern, label_map, include, exclude; mvtec:
            label_map, splits; voc/coco/yolo: the box options of `_boxes.BoxSettings`, images, plus
            annotations (voc, coco) or labels, class_names (yolo); deeppcb: multi_label, outside,
            empty_label, empty_text, group_by; folder: templates, group_pattern; synthetic: n,
            size, classes, width, height, aspects, defect_size). Options set to None are
            ignored, so a command line can pass its unset flags through.

    Returns:
        `ImportResult` with the manifest path, row count, skip counts and notes.

    Raises:
        DataError: unknown kind or option, bad fractions, or the importer's own data errors.
    """
    key = kind.strip().lower().replace("_", "-")
    if key not in IMPORTERS:
        raise DataError(f"unknown import kind {kind!r}; valid kinds: {', '.join(IMPORTERS)}")
    runner, allowed = IMPORTERS[key]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise DataError(
            f"{key}: unknown option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(allowed) if allowed else '(none)'}"
        )
    _check_fraction("val_frac", val_frac)
    _check_fraction("test_frac", test_frac)
    _check_fraction("calib_frac", calib_frac)
    if val_frac + test_frac + calib_frac >= 1.0:
        raise DataError(
            f"val_frac + test_frac + calib_frac must be below 1, got {val_frac + test_frac + calib_frac}"
        )
    src_path = None if src is None else Path(src).expanduser()
    logger.debug("import %s from %s into %s with %s", key, src_path, out, given)
    fracs = {"val_frac": val_frac, "test_frac": test_frac, "calib_frac": calib_frac}
    return runner(src_path, Path(out), seed=seed, **fracs, **given)


def importer_options(kind: str) -> tuple[str, ...]:
    """Options a kind accepts (for command-line help)."""
    return IMPORTERS[kind][1]
