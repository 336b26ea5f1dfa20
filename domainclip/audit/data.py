"""Which images an audit scores, their targets and subgroups, and embedding each of them once."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from domainclip.audit.analysis import MISSING
from domainclip.audit.spec import AuditSpec
from domainclip.datasets.manifest import Manifest, ManifestRow
from domainclip.datasets.subgroups import subgroup_values as binned
from domainclip.errors import ConfigError, DataError

if TYPE_CHECKING:
    from domainclip.runs.run import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class AuditRows:
    """The rows an audit scores and what was left out.

    Attributes:
        spec: the spec restricted to findings that occur in the data.
        rows: rows with at least one label among the findings, in manifest order.
        unused_labels: label -> rows of the split whose labels are all outside the spec (skipped).
        findings_absent: spec findings without any image in the split (skipped with a warning).
        subgroups_absent: spec subgroup columns that no row has.
    """

    spec: AuditSpec
    rows: list[ManifestRow]
    unused_labels: dict[str, int] = field(default_factory=dict)
    findings_absent: list[str] = field(default_factory=list)
    subgroups_absent: list[str] = field(default_factory=list)


def select_rows(manifest: Manifest, split: str | None, spec: AuditSpec) -> AuditRows:
    """Rows of `split` (None: all) whose labels include a spec finding; drop absent findings.

    Raises:
        DataError: the split is empty, or fewer than two findings occur in it.
    """
    where = manifest.path or "<in-memory manifest>"
    rows = [r for r in manifest.rows if split is None or r.split == split]
    if not rows:
        splits = dict(Counter(r.split for r in manifest.rows))
        raise DataError(f"{where}: no rows in split {split!r} (splits present: {splits})")
    wanted = set(spec.labels)
    kept = [r for r in rows if wanted & set(r.label)]
    unused = Counter(
        "|".join(r.label) if r.label else "(no label)" for r in rows if not wanted & set(r.label)
    )
    present = {lab for r in kept for lab in r.label} & wanted
    absent = [lab for lab in spec.labels if lab not in present]
    if absent:
        log.warning(
            "%s: spec finding(s) %s have no image in split %r: skipped",
            where,
            ", ".join(map(repr, absent)),
            split,
        )
    if unused:
        log.warning(
            "%s: %d row(s) of split %r have no label among the spec's findings and are skipped: %s",
            where,
            sum(unused.values()),
            split,
            dict(unused.most_common(8)),
        )
    if len(present) < 2:
        raise DataError(
            f"{where}: split {split!r} has images of {len(present)} of the spec's findings "
            f"({', '.join(sorted(present)) or 'none'}); an audit needs at least two. Spec "
            f"findings: {', '.join(spec.labels)}; labels in the split: "
            f"{', '.join(sorted({lab for r in rows for lab in r.label})) or 'none'}"
        )
    if not any(f.framed and f.label in present for f in spec.findings):
        raise DataError(
            f"{where}: split {split!r} has images only of control findings (framed: false), whose "
            "texts never change with the framing: there is nothing to audit"
        )
    columns = {k for r in rows for k in r.meta}
    missing_cols = [c for c in spec.subgroups if c not in columns]
    if missing_cols:
        log.warning(
            "%s: subgroup column(s) %s not in the manifest: skipped (columns: %s)",
            where,
            ", ".join(missing_cols),
            ", ".join(sorted(columns)) or "none",
        )
    return AuditRows(
        spec=spec.with_findings([lab for lab in spec.labels if lab in present]),
        rows=kept,
        unused_labels=dict(unused),
        findings_absent=absent,
        subgroups_absent=missing_cols,
    )


def targets(rows: list[ManifestRow], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(target [N]: index of each row's first label among `classes`, positives bool [N, C])."""
    lookup = {c: i for i, c in enumerate(classes)}
    target = np.array([next(lookup[x] for x in r.label if x in lookup) for r in rows])
    positives = np.zeros((len(rows), len(classes)), dtype=bool)
    for i, r in enumerate(rows):
        positives[i, [lookup[x] for x in r.label if x in lookup]] = True
    return target, positives


def subgroup_values(
    rows: list[ManifestRow], columns: list[str], bins: dict[str, float] | None = None
) -> dict[str, list[str]]:
    """column -> value per row ("(missing)" where empty); numeric columns such as age binned
    (`datasets.subgroups`: age in decades unless `bins` says otherwise)."""
    return {
        c: [v or MISSING for v in binned(c, [r.meta.get(c, "") for r in rows], bins)]
        for c in columns
    }


class _Positioned(torch.utils.data.Dataset):
    """(position, preprocessed image) pairs; None for unreadable images (PairedDataset logs them)."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        sample = self.ds[i]
        return None if sample is None else (i, sample["image"])


def _collate(batch):
    ok = [b for b in batch if b is not None]
    if not ok:
        return None
    imgs = [img for _, img in ok]
    if imgs[0].dim() == 4:  # fit: tile -> [sum T, 3, S, S] and the tiles per image
        return [i for i, _ in ok], torch.cat(imgs), [len(t) for t in imgs]
    return [i for i, _ in ok], torch.stack(imgs), None


def embed_rows(
    model: ResolvedModel,
    manifest: Manifest,
    rows: list[ManifestRow],
    batch_size: int = 32,
    num_workers: int = 0,
) -> tuple[torch.Tensor, list[int], dict[str, str]]:
    """Embed every row's image once with `model.preprocess` + `model.backbone.encode_images`
    (`fit: tile`: every tile, one pooled feature per image; the audit scores that feature, not
    aggregated tile logits).

    Returns:
        (features [M, D] of the readable images, positions (into `rows`) of those images,
        failures: absolute path -> error of unreadable images, which are skipped and logged;
        with num_workers > 0 the messages stay in the workers: count len(rows) - M instead).
    """
    from torch.utils.data import DataLoader

    from domainclip.datasets.torch_dataset import PairedDataset

    sub = Manifest(rows=list(rows), root=manifest.root, path=manifest.path)
    labels = sorted({lab for r in rows for lab in r.label})
    ds = PairedDataset(sub, split=None, transform=model.preprocess, classes=labels)
    loader = DataLoader(
        _Positioned(ds),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    feats, kept = [], []
    for batch in loader:
        if batch is None:
            continue
        positions, pixels, counts = batch
        f = model.backbone.encode_images(pixels, batch_size=batch_size)
        if counts is not None:  # tiled: the pooled (normalised mean) tile feature per image
            from domainclip.scoring.tiles import TiledFeatures

            f = TiledFeatures(f, counts).pooled()
        feats.append(f)
        kept.extend(positions)
    if not feats:
        raise DataError(
            f"{manifest.path}: none of the {len(rows)} selected images could be read "
            f"(first error: {next(iter(ds.failures.values()), 'unknown')})"
        )
    return torch.cat(feats), kept, dict(ds.failures)


def manifest_from_run(run_dir: Path) -> Path:
    """The manifest a fine-tuning run was trained on (its config.yaml `data.manifest`)."""
    from domainclip.runs import Run

    run = Run(run_dir)
    value = run.setting("data.manifest")
    if not value:
        raise ConfigError(f"{run.layout.config} names no data.manifest; pass --data MANIFEST")
    path = Path(value).expanduser()
    # The trainer resolves relative manifest paths against its working directory; a run that was
    # moved together with its data may hold it relative to the run instead.
    for candidate in (path, run_dir / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{run.layout.config}: data.manifest {value!r} not found (relative to the current "
        "directory or the run); pass --data MANIFEST"
    )
