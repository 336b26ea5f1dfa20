"""Training on tiled images (`data.fit: tile`): multiple-instance learning from image-level text.

An image is T tiles (`domainclip.datasets.tiling`); its report or class describes the whole
image, not a tile. The image-text logit is the aggregate of the tile logits
(`domainclip.scoring.tiles`, `data.tile.aggregate`, default lse = a smooth max), and the usual
losses are applied to those aggregated logits:

    logits[i, j] = agg_t( scale * cos(tile_{i,t}, text_j) )          [B, B]
    loss = soft_target_loss(logits, positives)   (+ supervised: CE of agg_t(scale * tile @ W.T))

so an image-level report trains a tile model: the tile that shows "scratch at the upper left"
is pulled towards that text, and the clean tiles of that image are not forced to match it.

The trainer asks `TiledLoss.of(...)` for the loss when a batch carries tile counts; cached
frozen tile features (`CachedFeatures.counts`) are selected with `cached_images`.
Methods fitted in closed form on cached features (linear_probe, tip_adapter) and multi-process
training are refused for `fit: tile` (`check_supported`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domainclip.errors import ConfigError
from domainclip.finetune.config import FinetuneConfig
from domainclip.finetune.data import CachedFeatures
from domainclip.finetune.losses import soft_target_loss
from domainclip.scoring.tiles import TiledFeatures, aggregate_tiles

TILE_METHODS = ("lora", "full", "clip_adapter")


def check_supported(cfg: FinetuneConfig, world: int = 1) -> None:
    """Refuse `fit: tile` where it cannot be trained (names the method and what to do)."""
    if cfg.data.fit != "tile":
        return
    if cfg.method.name not in TILE_METHODS:
        raise ConfigError(
            f"method.name={cfg.method.name} fits a classifier on one feature per image and does "
            f"not support data.fit=tile; use one of {', '.join(TILE_METHODS)} (e.g. the default "
            "lora recipe), or data.fit=letterbox"
        )
    if world > 1:
        raise ConfigError(
            f"data.fit=tile trains on one process only ({world} were started): run without "
            "torchrun, or use data.fit=letterbox"
        )


def tile_rule(cfg: FinetuneConfig) -> str:
    """The tile aggregate of a config (`data.tile.aggregate`; "lse" when not tiled)."""
    tile = cfg.data.tile_settings()
    return tile.aggregate if tile else "lse"


def cached_images(cache: CachedFeatures, pos: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
    """Cached features of the cache rows `pos` [b]: ([b, Dpre], None), or tiled
    ([sum T, Dpre] of those images' tiles in order, [T per image])."""
    if cache.counts is None:
        return cache.feats[pos], None
    counts = cache.counts.tolist()
    tiles = TiledFeatures(cache.feats, counts).select(pos)
    return tiles.feats, tiles.counts


@dataclass
class TiledLoss:
    """The losses on aggregated tile logits for one micro-batch (`counts`: tiles per image)."""

    counts: list[int]
    rule: str

    @classmethod
    def of(cls, cfg: FinetuneConfig, counts: Sequence[int] | None) -> TiledLoss | None:
        """The tiled loss when the batch is tiled (counts given), else None."""
        if counts is None:
            return None
        return cls([int(c) for c in counts], tile_rule(cfg))

    def contrastive(
        self, tiles: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor
    ) -> torch.Tensor:
        """tiles [sum T, D] and texts [B, D] (L2-normalised; text i pairs with image i), scale:
        exp(logit_scale) clamped, positives [B, B] -> scalar multi-positive loss."""
        logits = aggregate_tiles(scale * tiles @ texts.T, self.counts, self.rule)
        return soft_target_loss(logits, positives)

    def supervised(
        self, tiles: torch.Tensor, class_feats: torch.Tensor, scale: torch.Tensor, label_index: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of the aggregated class logits (class_feats [C, D], label_index [B],
        -1 = ignored)."""
        logits = aggregate_tiles(scale * tiles @ class_feats.T, self.counts, self.rule)
        keep = label_index >= 0
        if not bool(keep.any()):
            return tiles.sum() * 0.0
        return F.cross_entropy(logits[keep], label_index[keep])
