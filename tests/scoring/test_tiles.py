"""Tile-score aggregation: the rules on known numbers, gradients, TiledFeatures selection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from domainclip.scoring.tiles import TiledFeatures, aggregate_tiles, tiled_similarity


def test_rules_on_known_scores():
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 5.0]])  # image 0: tiles 0-1; image 1: tile 2
    assert aggregate_tiles(s, [2, 1], "max").tolist() == [[3.0, 0.0], [2.0, 5.0]]
    assert aggregate_tiles(s, [2, 1], "mean").tolist() == [[2.0, 0.0], [2.0, 5.0]]
    lse = aggregate_tiles(s, [2, 1], "lse")
    assert lse[0, 0].item() == pytest.approx(math.log((math.e + math.e**3) / 2))
    assert lse[0, 1].item() == pytest.approx(0.0)  # equal tiles: lse = mean
    assert lse[1].tolist() == [2.0, 5.0]  # one tile: the tile itself
    # lse lies between mean and max; far above the rest it is max - log T
    far = torch.tensor([[100.0], [0.0], [0.0], [0.0]])
    assert aggregate_tiles(far, [4], "lse").item() == pytest.approx(100 - math.log(4))


def test_bad_counts_and_rule():
    with pytest.raises(ValueError, match="do not add up"):
        aggregate_tiles(torch.zeros(3, 1), [2, 2])
    with pytest.raises(ValueError, match="unknown tile aggregate"):
        aggregate_tiles(torch.zeros(3, 1), [3], "median")


def test_lse_gives_gradient_to_every_tile_max_to_one():
    s = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    aggregate_tiles(s, [3], "lse").sum().backward()
    assert (s.grad > 0).all() and s.grad.sum().item() == pytest.approx(1.0)
    s.grad = None
    aggregate_tiles(s, [3], "max").sum().backward()
    assert s.grad.flatten().tolist() == [0.0, 0.0, 1.0]


def test_tiled_features_select_pool_and_score():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    tf = TiledFeatures(feats, [1, 3, 2], "max")
    sub = tf.select([2, 0])
    assert sub.counts == [2, 1] and torch.equal(sub.feats, feats[[4, 5, 0]])
    pooled = tf.pooled()
    assert torch.allclose(pooled[1], F.normalize(feats[1:4].mean(0), dim=0))
    text = F.normalize(torch.randn(2, 4, generator=g), dim=-1)
    logits = tf.scores(lambda f: 10 * f @ text.T)
    assert torch.allclose(logits[1], (10 * feats[1:4] @ text.T).max(0).values)
    assert torch.allclose(tiled_similarity(feats, [1, 3, 2], text, 10.0, "max"), logits)
