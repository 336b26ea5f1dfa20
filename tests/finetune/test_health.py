"""finetune.health: the uniform-prediction loss, embedding spread and the collapse rule."""

from __future__ import annotations

import math

import pytest
import torch

from domainclip.finetune.health import collapse_warning, feature_spread, uniform_loss
from domainclip.finetune.losses import positive_mask, soft_target_loss


def test_uniform_loss_is_what_equal_logits_give():
    texts = [f"t{i % 3}" for i in range(10)]
    chunks = [slice(0, 8), slice(8, 10)]
    losses = [float(soft_target_loss(torch.zeros(8 if c.start == 0 else 2, 8 if c.start == 0 else 2),
                                     positive_mask(texts[c]))) for c in chunks]
    assert uniform_loss(10, 8) == (math.log(8) + math.log(2)) / 2
    assert sum(losses) / 2 == pytest.approx(uniform_loss(10, 8), abs=1e-6)
    assert uniform_loss(9, 8) == math.log(8)  # a 1-row chunk is not scored
    assert math.isnan(uniform_loss(1, 8))


def test_feature_spread():
    g = torch.Generator().manual_seed(0)
    assert feature_spread(torch.randn(400, 64, generator=g)) > 0.95
    same = torch.randn(1, 64, generator=g).repeat(50, 1) * torch.rand(50, 1, generator=g)
    assert feature_spread(same) < 1e-6  # one direction, any length
    assert math.isnan(feature_spread(torch.randn(1, 8)))


def test_collapse_rule():
    healthy = {"loss": 1.9, "n": 10, "image_spread": 0.2, "text_spread": 0.3}
    assert collapse_warning(healthy, 4, 8, 1e-3) is None
    at_uniform = {**healthy, "loss": math.log(4) + 1e-4}
    w = collapse_warning(at_uniform, 4, 8, 1.0)
    assert w.kind == "collapse" and w.step == 4 and "uniform-prediction value 1.3863" in w.message
    assert "optim.lr=1" in w.message and "not saved as best" in w.message
    assert collapse_warning(at_uniform, 0, 8, 1.0) is None  # nothing trained yet
    flat_text = {**healthy, "text_spread": 2e-5}
    assert "text embeddings" in collapse_warning(flat_text, 8, 8, 1.0).message
    # as flat before training (a random tower): not a collapse caused by training
    assert collapse_warning(flat_text, 8, 8, 1.0, initial={"text_spread": 5e-4}) is None
    assert collapse_warning(flat_text, 8, 8, 1.0, initial={"text_spread": 0.3}) is not None
