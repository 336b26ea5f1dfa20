"""Saliency of tiled inputs (`fit: tile`): each tile explained on its own, stitched back.

A tiled image is T model inputs (`domainclip.datasets.tiling`). A map is computed per tile
(same method, prompt and options as for one input), and the T maps [S, S] are stitched into
the ORIGINAL image's pixels (`TilePlan.stitch`: overlaps averaged, padding ignored), so
localisation (pointing game, energy in region) is measured against the original mask or boxes.
The map's score is the image's: the tile scores aggregated by the run's rule
(`domainclip.scoring.tiles`, lse by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from domainclip.datasets.tiling import TilePlan
from domainclip.explain.image import SaliencyMap
from domainclip.scoring.tiles import aggregate_tiles


def stitched(
    explain_one: Callable[[torch.Tensor], SaliencyMap],
    pixels: torch.Tensor,
    plan: TilePlan,
    aggregate: str = "lse",
) -> SaliencyMap:
    """Explain each tile (pixels [T, 3, S, S], one call with [1, 3, S, S] each) and stitch.

    Returns:
        A SaliencyMap whose `map` is float32 [H0, W0] in original pixels, `score` the aggregated
        tile score, `seconds` the sum, `params` the first tile's plus `tiles` (T) and
        `tile_scores`.
    """
    maps = [explain_one(pixels[k : k + 1]) for k in range(pixels.shape[0])]
    scores = torch.tensor([[float(m.score)] for m in maps], dtype=torch.float64)
    score = float(aggregate_tiles(scores, [len(maps)], aggregate)[0, 0])
    full = plan.stitch(np.stack([m.map for m in maps])).astype(np.float32)
    params = {**maps[0].params, "tiles": len(maps), "tile_scores": [float(m.score) for m in maps]}
    return dataclasses.replace(
        maps[0], map=full, score=score, seconds=sum(m.seconds for m in maps), params=params
    )
