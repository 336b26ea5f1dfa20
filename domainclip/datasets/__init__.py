"""Paired image-text data: manifests, robust image reading, transforms, splits, validation.

Names are re-exported lazily so that `import domainclip.datasets.manifest` (used by importers and
the CLI) does not pull in torch, albumentations or scikit-learn.
"""

from __future__ import annotations

from domainclip.lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "CORE_COLUMNS": "manifest",
    "SPLITS": "manifest",
    "UNASSIGNED": "manifest",
    "Manifest": "manifest",
    "ManifestProblem": "manifest",
    "ManifestRow": "manifest",
    "normalize_split": "manifest",
    "parse_label": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "ImageReadError": "imageio",
    "load_image": "imageio",
    "load_mask": "imageio",
    "read_image_size": "imageio",
    "GeometryReport": "geometry_report",
    "geometry_report": "geometry_report",
    "geometry_reports": "geometry_report",
    "ImageTransform": "transforms",
    "build_transform": "transforms",
    "eval_transform": "transforms",
    "train_transform": "transforms",
    "PRESETS": "transforms",
    "LeakageProblem": "splits",
    "assign_splits": "splits",
    "assert_no_leakage": "splits",
    "check_leakage": "splits",
    "PairedDataset": "torch_dataset",
    "collate_samples": "torch_dataset",
    "ValidationReport": "validate",
    "validate_manifest": "validate",
    "format_stats": "stats",
    "manifest_stats": "stats",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
