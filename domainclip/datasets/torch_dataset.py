"""PyTorch dataset over a manifest, and the collate function that builds model batches.

Unreadable images never crash a training run and are never lost silently: `__getitem__` returns
None for them, counts the failure and logs it once per file; `collate_samples` drops the None
entries and reports how many it dropped in the batch (``n_dropped``), so a trainer running
DataLoader workers (whose dataset copies keep their own counters) can still add them up.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from domainclip.datasets.imageio import DEFAULT_MAX_SIDE, load_image
from domainclip.datasets.manifest import (
    SPLITS,
    UNASSIGNED,
    Manifest,
    normalize_split,
    read_manifest,
)
from domainclip.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Sample = dict[str, Any]


class PairedDataset(Dataset):
    """Image-text pairs of a manifest (optionally one split) as sample dicts.

    A sample has the keys ``image`` (Tensor[3,H,W] after `transform`, PIL RGB image without one),
    ``text`` (str), ``label`` (list[str]), ``group`` (str), ``path`` (absolute str), ``meta``
    (dict[str, str]) and ``index`` (the row number in the manifest file).

    Args:
        manifest: a `Manifest` or the path of a manifest file.
        split: "train" / "val" / "test" (aliases accepted) or "unassigned"; None for all rows.
        transform: callable PIL.Image -> Tensor[3,H,W] (see `build_transform`).
        classes: label vocabulary; default: sorted labels of the WHOLE manifest, so datasets of
            different splits share one class indexing.
        max_side: passed to `load_image` (images larger than this are downscaled on read).

    Attributes:
        classes: sorted label vocabulary (list[str]).
        failures: absolute path -> error message of images that could not be read.
        n_unknown_label_rows: rows with a label outside `classes` (it is ignored in label tensors).
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike[str],
        split: str | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.split = _check_split(split)
        self.transform = transform
        self.max_side = max_side
        positions = {id(r): i + 1 for i, r in enumerate(self.manifest.rows)}
        self.rows = [r for r in self.manifest.rows if self.split is None or r.split == self.split]
        # In-memory manifests have no file row numbers; their position stands in.
        self._index = [r.row or positions[id(r)] for r in self.rows]
        vocab = classes if classes is not None else _vocabulary(self.manifest)
        self.classes: list[str] = sorted(dict.fromkeys(vocab))
        known = set(self.classes)
        self.n_unknown_label_rows = sum(
            1 for r in self.rows if any(x not in known for x in r.label)
        )
        if self.n_unknown_label_rows:
            logger.warning(
                "%d rows have labels outside the %d given classes; those labels are ignored in "
                "label tensors",
                self.n_unknown_label_rows,
                len(self.classes),
            )
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample | None:
        """Sample dict for row `i` of this dataset, or None if its image cannot be read."""
        row = self.rows[i]
        path = self.manifest.image_path(row)
        try:
            img: Any = load_image(path, max_side=self.max_side)
        except DataError as exc:
            self._record_failure(str(path), str(exc), row.where())
            return None
        if self.transform is not None:
            img = self.transform(img)
        return {
            "image": img,
            "text": row.text,
            "label": list(row.label),
            "group": row.group,
            "path": str(path),
            "meta": dict(row.meta),
            "index": self._index[i],
        }

    def _record_failure(self, path: str, message: str, where: str) -> None:
        if path not in self.failures:
            logger.warning("skipping unreadable image at %s: %s", where, message)
        self.failures[path] = message

    @property
    def collate(self) -> Callable[[list[Sample | None]], dict[str, Any] | None]:
        """`collate_samples` bound to this dataset's classes (for DataLoader's collate_fn)."""
        return functools.partial(collate_samples, classes=self.classes)


def _check_split(split: str | None) -> str | None:
    if split is None:
        return None
    canonical = normalize_split(split)
    if canonical is None or not split.strip():
        raise ConfigError(
            f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or {UNASSIGNED!r}"
        )
    return canonical


def _vocabulary(manifest: Manifest) -> list[str]:
    return sorted({lab for r in manifest.rows for lab in r.label})


def collate_samples(
    batch: Sequence[Sample | None], classes: Sequence[str]
) -> dict[str, Any] | None:
    """Stack samples into a batch, dropping failed (None) samples.

    Returns None when every sample failed (the trainer skips and counts such batches), else::

        image            FloatTensor[B, 3, H, W]
        text             list[str]            (B)
        label            list[list[str]]      (B)
        label_multi_hot  FloatTensor[B, C]    (C = len(classes); unknown labels ignored)
        label_index      LongTensor[B]        (index of the first label, -1 if none/unknown)
        group, path      list[str]            (B)
        meta             list[dict[str, str]] (B)
        index            list[int]            (B)
        n_dropped        int                  (failed samples removed from this batch)
        n_tiles          list[int] | None     (B) tiles per image when images are tiled
                                              (`fit: tile`, image Tensor[T_i, 3, S, S]): then
                                              image is FloatTensor[sum T_i, 3, S, S], in order
    """
    ok = [s for s in batch if s is not None]
    n_dropped = len(batch) - len(ok)
    if not ok:
        return None
    if not all(isinstance(s["image"], torch.Tensor) for s in ok):
        raise TypeError("collate_samples needs Tensor images: give PairedDataset a transform")
    lookup = {c: i for i, c in enumerate(classes)}
    multi_hot = torch.zeros(len(ok), len(classes), dtype=torch.float32)
    first = torch.full((len(ok),), -1, dtype=torch.long)
    for b, s in enumerate(ok):
        idx = [lookup[x] for x in s["label"] if x in lookup]
        if idx:
            multi_hot[b, idx] = 1.0
        if s["label"] and s["label"][0] in lookup:
            first[b] = lookup[s["label"][0]]
    tiled = ok[0]["image"].dim() == 4
    return {
        "image": torch.cat([s["image"] for s in ok]) if tiled else torch.stack([s["image"] for s in ok]),
        "n_tiles": [int(s["image"].shape[0]) for s in ok] if tiled else None,
        "text": [s["text"] for s in ok],
        "label": [s["label"] for s in ok],
        "label_multi_hot": multi_hot,
        "label_index": first,
        "group": [s["group"] for s in ok],
        "path": [s["path"] for s in ok],
        "meta": [s["meta"] for s in ok],
        "index": [s["index"] for s in ok],
        "n_dropped": n_dropped,
    }


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: give each worker's augmentation stream its own seed.

    Without it every worker holds an identical copy of the transform and replays the same
    augmentations. The per-worker seed comes from torch (DataLoader generator + worker id), so
    a seeded DataLoader stays reproducible.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    ds: Any = info.dataset
    while not hasattr(ds, "transform") and hasattr(ds, "dataset"):  # unwrap Subset & co
        ds = ds.dataset
    transform = getattr(ds, "transform", None)
    if hasattr(transform, "reseed"):
        transform.reseed(int(info.seed % 2**32))
