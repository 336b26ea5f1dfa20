"""Embed the images of one manifest split once (unreadable images are skipped and counted)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from domainclip.datasets.manifest import Manifest, ManifestRow
from domainclip.datasets.torch_dataset import PairedDataset
from domainclip.datasets.transforms import eval_transform
from domainclip.errors import DataError
from domainclip.models import Backbone

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSplit:
    """Image features of a split and the manifest rows they belong to.

    image_feats: float [N, D] L2-normalised (row i belongs to rows[i]).
    failures: absolute image path -> why it could not be read (those rows are not in `rows`).
    """

    split: str | None
    image_feats: torch.Tensor
    rows: list[ManifestRow]
    paths: list[str]
    failures: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def embed_split(
    bb: Backbone,
    manifest: Manifest,
    split: str | None,
    batch_size: int = 32,
    transform: Callable | None = None,
) -> EmbeddedSplit:
    """Preprocess and embed every readable image of `split` (None: all rows).

    Args:
        transform: PIL image -> Tensor[3, S, S]; default `eval_transform(bb)` (letterbox at the
            native size). Runs pass `resolve_model(run).preprocess` (what the run trained with).

    Raises:
        DataError: the split has no rows, or none of its images could be read.
    """
    ds = PairedDataset(manifest, split=split, transform=transform or eval_transform(bb))
    if len(ds) == 0:
        counts = manifest.split_counts()
        raise DataError(
            f"{manifest.path}: split {split!r} has no rows (rows per split: {counts}); "
            "choose another --split or assign splits with `domainclip data import ... --val/--test`"
        )
    feats, rows, paths, pixels = [], [], [], []

    def flush() -> None:
        if pixels:
            feats.append(bb.encode_images(torch.stack(pixels), batch_size=batch_size))
            pixels.clear()

    for i in range(len(ds)):
        sample = ds[i]
        if sample is None:
            continue
        pixels.append(sample["image"])
        rows.append(ds.rows[i])
        paths.append(sample["path"])
        if len(pixels) == batch_size:
            flush()
    flush()
    if not rows:
        raise DataError(
            f"{manifest.path}: none of the {len(ds)} images of split {split!r} could be read "
            f"(first: {next(iter(ds.failures.values()), '?')})"
        )
    if ds.failures:
        log.warning(
            "%s split %s: skipped %d unreadable image(s) of %d",
            manifest.path,
            split,
            len(ds.failures),
            len(ds),
        )
    return EmbeddedSplit(split, torch.cat(feats), rows, paths, dict(ds.failures))
