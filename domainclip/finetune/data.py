"""Training data: splits from the manifest, the global-batch sampler, and the frozen-feature cache.

Data order is a pure function of (seed, epoch, position): every epoch is one seeded permutation
cut into *global* batches, and each process takes its contiguous slice of every global batch. So

* a resumed run continues with exactly the batches an uninterrupted run would have seen;
* N processes with batch B each see the same global batches as one process with batch N*B,
  which is what makes the DDP loss curve comparable (DistributedSampler's strided split is not);
* augmentation is seeded per (seed, epoch, sample), independent of workers and resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from domainclip.datasets.manifest import UNASSIGNED, Manifest, read_manifest
from domainclip.datasets.splits import check_leakage, format_leakage
from domainclip.datasets.torch_dataset import PairedDataset
from domainclip.errors import ConfigError, DataError
from domainclip.finetune.config import DataConfig
from domainclip.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """One split: the dataset plus per-row texts/labels (available without decoding images).

    Attributes:
        manifest, name, classes: where the rows come from (`dataset()` builds a PairedDataset).
        positions: dataset positions used (after max_train/max_val).
        texts: text per used row; label_index: LongTensor[N], first label's class index or -1.
        labels: label lists per used row.
    """

    manifest: Manifest
    name: str
    classes: list[str]
    positions: list[int]
    texts: list[str]
    labels: list[list[str]]
    label_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.positions)

    def dataset(self, transform=None) -> PairedDataset:
        """The split's PairedDataset with `transform` (index it with `positions`)."""
        return PairedDataset(
            self.manifest, split=self.name, transform=transform, classes=self.classes
        )


@dataclass
class Splits:
    manifest: Manifest
    classes: list[str]
    train: SplitData
    val: SplitData


def _subset(n: int, limit: int, seed: int) -> list[int]:
    if not limit or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def _split(
    manifest: Manifest, name: str, classes: list[str], limit: int, seed: int, what: str
) -> SplitData:
    ds = PairedDataset(manifest, split=name, classes=classes)
    if len(ds) == 0:
        split_counts = manifest.split_counts()
        counts = ", ".join(f"{k}: {v}" for k, v in split_counts.items()) or "no rows"
        fix = (
            f"Assign splits with `domainclip data split {manifest.path}` (group-aware and "
            "stratified; it writes the split column, so evaluate and audit see the same split)"
            if split_counts.get(UNASSIGNED)
            else f"Reassign splits with `domainclip data split {manifest.path} --force`"
        )
        raise DataError(
            f"{manifest.path}: the {what} split {name!r} is empty (rows per split: {counts}). "
            f"{fix}, or set data.{what}_split to a split that has rows."
        )
    pos = _subset(len(ds), limit, seed)
    lookup = {c: i for i, c in enumerate(classes)}
    rows = [ds.rows[i] for i in pos]
    idx = [lookup.get(r.label[0], -1) if r.label else -1 for r in rows]
    return SplitData(
        manifest=manifest,
        name=name,
        classes=classes,
        positions=pos,
        texts=[r.text for r in rows],
        labels=[list(r.label) for r in rows],
        label_index=torch.tensor(idx, dtype=torch.long),
    )


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Read the manifest and build the train and val splits.

    Raises:
        DataError: unreadable manifest, or an empty train/val split (message lists split counts).
        ConfigError: data.classes names a class that no row carries.
    """
    path = Path(cfg.manifest).expanduser()
    if not path.is_file():
        raise DataError(
            f"data.manifest: {path} not found (create one with `domainclip data import KIND SRC --out DIR`)"
        )
    manifest = read_manifest(path)
    _check_leakage(manifest, path, cfg.allow_group_leakage)
    found = sorted({lab for r in manifest.rows for lab in r.label})
    classes = list(cfg.classes) or found
    unknown = [c for c in cfg.classes if c not in found]
    if unknown:
        raise ConfigError(
            f"data.classes: {', '.join(unknown)} never occur in {path} (labels found: {', '.join(found)})"
        )
    train = _split(manifest, cfg.train_split, classes, cfg.max_train, seed, "train")
    val = _split(manifest, cfg.val_split, classes, cfg.max_val, seed + 1, "val")
    return Splits(manifest=manifest, classes=classes, train=train, val=val)


def _check_leakage(manifest: Manifest, path: Path, allowed: bool) -> None:
    """Refuse a manifest whose groups span splits (unless `data.allow_group_leakage`)."""
    problems = check_leakage(manifest.rows)
    if not problems:
        return
    if not allowed:
        raise DataError(
            f"{path}: {format_leakage(problems)} To train anyway (test metrics will be inflated), "
            "set data.allow_group_leakage=true; the run records it."
        )
    log.warning("%s: training with group leakage (data.allow_group_leakage): %s", path,
                format_leakage(problems))


# ---------------------------------------------------------------------------------------------
# Batches


class GlobalBatches:
    """Seeded epoch permutations cut into global batches; this rank's slice of each.

    Args:
        n: dataset size; global_batch: pairs per optimizer micro-step over all processes.
        seed: base seed; rank/world: this process and the number of processes.

    A final incomplete batch is dropped (contrastive losses want full batches) unless the whole
    dataset is smaller than one batch, in which case the epoch is a single batch of n.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ConfigError(
                f"train.batch_size={global_batch} must be divisible by the number of processes ({world})"
            )
        self.n, self.global_batch, self.seed, self.rank, self.world = (
            n,
            global_batch,
            seed,
            rank,
            world,
        )
        self.batch = min(global_batch, n)

    def __len__(self) -> int:
        """Global batches per epoch."""
        return max(1, self.n // self.global_batch)

    def epoch(self, epoch: int) -> list[list[int]]:
        """This rank's index lists for every batch of `epoch` (indices into the split)."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        size = self.batch
        per_rank = size // self.world
        out = []
        for b in range(len(self)):
            chunk = perm[b * size : (b + 1) * size]
            out.append(chunk[self.rank * per_rank : (self.rank + 1) * per_rank])
        return out


class _SeededAugment(Dataset):
    """Sample i of epoch e is augmented with a seed derived from (seed, e, i) only."""

    def __init__(self, split: SplitData, transform, seed: int, epoch: int) -> None:
        self.split, self.seed, self.epoch = split, seed, epoch
        self.ds = split.dataset(transform)
        self.collate = self.ds.collate

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        transform = self.ds.transform
        if hasattr(transform, "reseed"):
            transform.reseed((self.seed * 1_000_003 + self.epoch * 7919 + i) % 2**32)
        sample = self.ds[self.split.positions[i]]
        if sample is not None:
            sample["index"] = i  # index in the split (not the manifest row): what the trainer needs
        return sample


def image_batches(
    split: SplitData,
    transform,
    batches: Sequence[Sequence[int]],
    seed: int,
    epoch: int,
    num_workers: int,
) -> Iterator[dict | None]:
    """Decoded, augmented image batches (collate_samples dicts; None when every image failed).

    The dicts carry `rows`: the split indices of the images that loaded.
    """
    ds = _SeededAugment(split, transform, seed, epoch)
    loader = DataLoader(
        ds,
        batch_sampler=[list(b) for b in batches],
        collate_fn=ds.collate,
        num_workers=num_workers,
        persistent_workers=False,
    )
    for batch in loader:
        if batch is not None:
            batch["rows"] = list(batch["index"])
        yield batch


# ---------------------------------------------------------------------------------------------
# Frozen-feature cache


def fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    """Hash of weights (a feature cache must not survive a change of the frozen tower)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(split: SplitData, model_fp: str, transform_desc: str) -> str:
    """Key of one split's cached features: model weights, eval transform and the image files."""
    h = hashlib.sha256(f"{model_fp}|{transform_desc}".encode())
    ds = split.dataset()
    for i in split.positions:
        path = split.manifest.image_path(ds.rows[i])
        try:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{path}|missing".encode())
    return h.hexdigest()[:24]


@dataclass
class CachedFeatures:
    """Frozen-tower outputs of one split: feats [N_ok, Dpre], rows: split indices they belong to.

    Tiled images (`fit: tile`): feats [sum T_i, Dpre] (tiles in row order), counts [N_ok] = T_i.
    """

    feats: torch.Tensor
    rows: torch.Tensor  # LongTensor[N_ok] indices into the split (failed images are absent)
    n_failed: int
    counts: torch.Tensor | None = None  # LongTensor[N_ok] tiles per image, or None (not tiled)


def compute_pooled_features(
    split: SplitData,
    encode,  # callable pixels [B,3,H,W] -> [B,Dpre] (no grad)
    transform,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    desc: str,
) -> CachedFeatures:
    """Run the frozen tower once over a split (eval transform; unreadable images skipped, counted)."""
    from tqdm.auto import tqdm

    order = list(range(len(split)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    feats, rows, counts = [], [], []
    it = image_batches(split, transform, batches, seed=0, epoch=0, num_workers=num_workers)
    for batch in tqdm(it, desc=desc, total=len(batches), disable=not progress, leave=False):
        if batch is None:
            continue
        pix = batch["image"]
        # tiled images: [sum T, 3, S, S], encoded in chunks of batch_size tiles
        feats += [encode(pix[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(pix), batch_size)]
        rows += batch["rows"]
        counts += batch.get("n_tiles") or []
    if not feats:
        raise DataError(f"{desc}: none of the {len(split)} images could be read")
    failed = len(split) - len(rows)
    if failed:
        log.warning(
            "%s: %d of %d images could not be read and are left out", desc, failed, len(split)
        )
    tiles = torch.tensor(counts, dtype=torch.long) if counts else None
    return CachedFeatures(torch.cat(feats), torch.tensor(rows, dtype=torch.long), failed, tiles)


def load_or_compute(
    split: SplitData,
    encode,
    cache_dir: str,
    model_fp: str,
    transform_desc: str,
    **kw,
) -> CachedFeatures:
    """`compute_pooled_features`, reusing a file under `cache_dir` keyed by model, transform and
    image files (path, size, mtime). cache_dir "" = compute every time (in memory only)."""
    from safetensors.torch import load_file, save

    if not cache_dir:
        return compute_pooled_features(split, encode, **kw)
    key = cache_key(split, model_fp, transform_desc)
    path = Path(cache_dir).expanduser() / f"{key}.safetensors"
    if path.is_file():
        try:
            data = load_file(str(path))
            meta = json.loads((path.with_suffix(".json")).read_text())
            log.info("%s: reusing cached features %s", kw.get("desc", ""), path)
            return CachedFeatures(data["feats"], data["rows"], int(meta["n_failed"]), data.get("counts"))
        except (OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable feature cache %s (%s); recomputing", path, exc)
    out = compute_pooled_features(split, encode, **kw)
    try:
        # Sidecar first: a cache file is only trusted once its sidecar exists beside it.
        atomic_write_json(path.with_suffix(".json"), {"n_failed": out.n_failed, "n": len(split)})
        tensors = {"feats": out.feats.contiguous(), "rows": out.rows}
        if out.counts is not None:
            tensors["counts"] = out.counts
        atomic_write_bytes(path, save(tensors))
    except OSError as exc:  # a full or read-only cache disk must not stop training
        log.warning("could not write the feature cache %s: %s", path, exc)
    return out


__all__ = [
    "CachedFeatures",
    "GlobalBatches",
    "SplitData",
    "Splits",
    "fingerprint_state",
    "image_batches",
    "load_or_compute",
    "load_splits",
]
