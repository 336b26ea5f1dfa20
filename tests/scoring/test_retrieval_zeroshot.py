"""Retrieval on hand-built cases; zero-shot class embeddings and multi-label logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domainclip.models.testing import tiny_open_clip_backbone
from domainclip.scoring.retrieval import retrieval_metrics, retrieval_ranks
from domainclip.scoring.zeroshot import class_embeddings, multilabel_logits, zero_shot_logits


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_retrieval_hand_built_ranks():
    # 3 images, 3 distinct texts; image 1 prefers text 2, image 2 prefers text 1.
    img = _unit([1, 0, 0], [0, 1, 0.2], [0, 0.3, 1])
    txt = _unit([1, 0, 0], [0, 0.1, 1], [0, 1, 0])
    i2t, t2i = retrieval_ranks(img, txt)
    assert i2t.tolist() == [1, 2, 2]
    assert t2i.tolist() == [1, 2, 2]
    m = retrieval_metrics(img, txt, ks=(1, 2))
    assert m["i2t_R@1"] == pytest.approx(1 / 3) and m["i2t_R@2"] == 1.0
    assert m["t2i_median_rank"] == 2.0 and m["n_texts"] == 3


def test_duplicate_texts_any_image_with_the_text_is_correct():
    # images 0 and 1 share the text "A"; image 2 has "B".
    img = _unit([1, 0], [0.9, 0.1], [0, 1])
    txt = _unit([1, 0], [1, 0], [0, 1])
    i2t, t2i = retrieval_ranks(img, txt, ["A", "A", "B"])
    assert i2t.tolist() == [1, 1, 1]  # only 2 distinct candidates; the duplicate is not a rival
    assert t2i.tolist() == [1, 1]  # one query per distinct text
    # Without grouping information, identical feature rows are grouped the same way.
    assert retrieval_metrics(img, txt)["n_texts"] == 2
    # Two different texts that happen to share features stay separate when groups say so.
    assert retrieval_metrics(img, txt, ["A", "C", "B"])["n_texts"] == 3


def test_ties_count_against_the_model():
    img = _unit([1, 0], [1, 0])
    txt = _unit([0, 1], [0, 1])  # all similarities tie at 0
    i2t, t2i = retrieval_ranks(img, txt, ["x", "y"])
    assert i2t.tolist() == [2, 2] and t2i.tolist() == [2, 2]


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        retrieval_metrics(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="text_groups"):
        retrieval_metrics(torch.zeros(3, 4), torch.zeros(3, 4), ["a"])


@pytest.fixture(scope="module")
def bb():
    return tiny_open_clip_backbone("vit", seed=1)


def test_class_embeddings_average_normalised_prompts_each_embedded_once(bb, monkeypatch):
    calls = []
    original = bb.encode_texts

    def counting(texts, batch_size=128):
        calls.append(list(texts))
        return original(texts, batch_size)

    monkeypatch.setattr(bb, "encode_texts", counting)
    texts = {"a": ["a pit", "a hole", "shared"], "b": ["a scratch", "shared"]}
    W = class_embeddings(bb, texts)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(
        ["a pit", "a hole", "shared", "a scratch"]
    )
    ref = original(["a pit", "a hole", "shared", "a scratch"])
    expect_a = F.normalize(ref[:3].mean(0), dim=0)
    expect_b = F.normalize(torch.stack([ref[3], ref[2]]).mean(0), dim=0)
    assert torch.allclose(W, torch.stack([expect_a, expect_b]), atol=1e-6)
    assert torch.allclose(W.norm(dim=1), torch.ones(2), atol=1e-6)
    # a cache means no new embedding call at all
    class_embeddings(
        bb, texts, cache=dict(zip(["a pit", "a hole", "shared", "a scratch"], ref, strict=True))
    )
    assert len(calls) == 1


def test_zero_shot_and_multilabel_logits(bb):
    img = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    W_pos = class_embeddings(bb, {"edema": ["edema"], "mass": ["a mass"]})
    W_neg = class_embeddings(bb, {"edema": ["no edema"], "mass": ["no mass"]})
    s = bb.logit_scale_value()
    assert torch.allclose(zero_shot_logits(bb, img, W_pos), s * img @ W_pos.T)
    d = multilabel_logits(bb, img, W_pos, W_neg)
    # sigmoid(pos - neg) is the softmax probability of the positive prompt within each pair
    pair = torch.softmax(torch.stack([s * img @ W_pos.T, s * img @ W_neg.T], -1), -1)[..., 0]
    assert torch.allclose(torch.sigmoid(d), pair, atol=1e-6)


def test_class_without_prompts_is_an_error(bb):
    from domainclip.errors import ConfigError

    with pytest.raises(ConfigError, match="without any prompt"):
        class_embeddings(bb, {"a": ["x"], "b": []})
