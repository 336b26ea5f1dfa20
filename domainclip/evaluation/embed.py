"""Embed the images of one manifest split once (unreadable images are skipped and counted)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from domainclip.datasets.manifest import Manifest, ManifestRow
from domainclip.datasets.torch_dataset import PairedDataset
from domainclip.datasets.transforms import eval_transform
from domainclip.errors import DataError
from domainclip.models import Backbone
from domainclip.scoring.tiles import TiledFeatures

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSplit:
    """Image features of a split and the manifest rows they belong to.

    image_feats: float [N, D] L2-normalised (row i belongs to rows[i]); for tiled images
        (`fit: tile`) the normalised mean tile feature.
    failures: absolute image path -> why it could not be read (those rows are not in `rows`).
    tiles: the tile features (`fit: tile`), else None.
    """

    split: str | None
    image_feats: torch.Tensor
    rows: list[ManifestRow]
    paths: list[str]
    failures: dict[str, str] = field(default_factory=dict)
    tiles: TiledFeatures | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def scores(self, score: Callable[[torch.Tensor], torch.Tensor], keep: Sequence[int] | np.ndarray) -> torch.Tensor:
        """`score` (image features [n, D] -> [n, C], e.g. `ZeroShotTask.logits`) of the rows at
        `keep`: on the image features, or per tile and aggregated (`domainclip.scoring.tiles`)."""
        if self.tiles is None:
            return score(self.image_feats[torch.as_tensor(np.asarray(keep), dtype=torch.long)])
        return self.tiles.select(list(np.asarray(keep).tolist())).scores(score)


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
            A tiling transform (`fit: tile`, Tensor[T, 3, S, S] per image) embeds every tile
            (batched) and fills `tiles`.

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
    feats, rows, paths, pixels, counts = [], [], [], [], []

    def flush() -> None:
        if pixels:
            batch = torch.cat(pixels) if pixels[0].dim() == 4 else torch.stack(pixels)
            feats.append(bb.encode_images(batch, batch_size=batch_size))
            pixels.clear()

    for i in range(len(ds)):
        sample = ds[i]
        if sample is None:
            continue
        pixels.append(sample["image"])
        if sample["image"].dim() == 4:
            counts.append(int(sample["image"].shape[0]))
        rows.append(ds.rows[i])
        paths.append(sample["path"])
        if sum(len(p) if p.dim() == 4 else 1 for p in pixels) >= batch_size:
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
    feats_all = torch.cat(feats)
    if counts:
        aggregate = getattr(getattr(ds.transform, "tile", None), "aggregate", "lse")
        tiles = TiledFeatures(feats_all, counts, aggregate)
        return EmbeddedSplit(split, tiles.pooled(), rows, paths, dict(ds.failures), tiles)
    return EmbeddedSplit(split, feats_all, rows, paths, dict(ds.failures))
