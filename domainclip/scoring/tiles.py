"""Image scores from tile scores (`fit: tile`): the one home of the aggregation rule.

A tiled image is T tiles, each embedded on its own (`domainclip.datasets.tiling`). Any score that
is linear in one image's features (zero-shot class logits, the binary logits of a multi-label
set, an image-text similarity) is computed per tile and aggregated per image:

    lse   log-mean-exp over tiles: log(1/T sum_t exp(s_t)); a smooth maximum, between the mean
          (equal tiles) and the max (one tile far above the rest: max - log T). The default: a
          finding is present when SOME tile shows it (multiple-instance learning), and the
          logits carry exp(logit_scale) (~100 after training), so one clear tile dominates while
          every tile still gets gradient in training.
    max   the best tile only (gradient to one tile per image and text).
    mean  the average tile (what a global description of the whole image needs; equals the
          logit of the unnormalised mean tile feature).

`TiledFeatures.pooled()` (the normalised mean tile feature) is the image's single embedding for
what takes one vector per image (retrieval of the rows' own descriptions, audit tables).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domainclip.datasets.tiling import TILE_AGGREGATES


def aggregate_tiles(scores: torch.Tensor, counts: Sequence[int], rule: str = "lse") -> torch.Tensor:
    """Per-tile scores [sum T_i, M] -> per-image scores [N, M] (differentiable).

    Args:
        counts: T_i, the tiles of image i (rows of `scores` in image order).
        rule: "lse" | "max" | "mean" (see the module docstring).
    """
    if rule not in TILE_AGGREGATES:
        raise ValueError(f"unknown tile aggregate {rule!r}; choose one of {', '.join(TILE_AGGREGATES)}")
    counts = [int(c) for c in counts]
    if sum(counts) != scores.shape[0] or any(c < 1 for c in counts):
        raise ValueError(f"tile counts {counts} do not add up to the {scores.shape[0]} tile rows")
    out = []
    for part in torch.split(scores, counts):
        if rule == "max":
            out.append(part.max(0).values)
        elif rule == "mean":
            out.append(part.mean(0))
        else:
            out.append(torch.logsumexp(part, 0) - math.log(part.shape[0]))
    return torch.stack(out)


@dataclass
class TiledFeatures:
    """L2-normalised tile features of N images: feats [sum T_i, D], counts [N] (T_i), the rule."""

    feats: torch.Tensor
    counts: list[int]
    aggregate: str = "lse"

    def __len__(self) -> int:
        return len(self.counts)

    def offsets(self) -> list[int]:
        """Row of each image's first tile in `feats` ([N + 1], last = sum T_i)."""
        out = [0]
        for c in self.counts:
            out.append(out[-1] + c)
        return out

    def select(self, index: Sequence[int] | torch.Tensor) -> TiledFeatures:
        """The images at `index` (in that order)."""
        off = self.offsets()
        idx = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        rows = [r for i in idx for r in range(off[i], off[i + 1])]
        return TiledFeatures(self.feats[rows], [self.counts[i] for i in idx], self.aggregate)

    def pooled(self) -> torch.Tensor:
        """[N, D]: each image's normalised mean tile feature (one vector per image)."""
        return F.normalize(aggregate_tiles(self.feats, self.counts, "mean"), dim=-1)

    def scores(self, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`score` (tile features [sum T, D] -> [sum T, M]) aggregated per image -> [N, M]."""
        return aggregate_tiles(score(self.feats), self.counts, self.aggregate)


def tiled_similarity(
    tile_feats: torch.Tensor,
    counts: Sequence[int],
    text_feats: torch.Tensor,
    logit_scale: torch.Tensor | float,
    rule: str = "lse",
) -> torch.Tensor:
    """Image-text logits [N, M] of tiled images: scale * cos per tile, aggregated per image.

    Args:
        tile_feats: [sum T_i, D] L2-normalised; text_feats: [M, D] L2-normalised.
    """
    return aggregate_tiles(logit_scale * tile_feats @ text_feats.T, counts, rule)
