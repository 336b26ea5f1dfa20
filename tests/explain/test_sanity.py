"""Sanity checks: real explainers pass, a deliberately broken one (edge map) is flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from domainclip.explain import ExplainError
from domainclip.explain.sanity import (
    deletion_insertion,
    edge_map_control,
    method_explainer,
    randomisation_check,
    randomised_copy,
    spearman,
    text_sensitivity_check,
    tower_parameters_top_down,
)
from tests.explain.conftest import PROMPT, pixels_for


def test_spearman():
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, a) == 1.0
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.zeros((4, 4))) == 0.0
    with pytest.raises(ExplainError):
        spearman(a, np.zeros((3, 3)))


def test_randomised_copy_touches_only_the_image_tower(tiny_vit):
    bb = tiny_vit
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    order = tower_parameters_top_down(bb)
    assert order[0] == "visual.proj"  # the output projection first, the patch embedding last
    assert order[-1] == "visual.conv1.weight"
    half, names = randomised_copy(bb, 0.5, seed=1, order=order)
    assert names == order[: len(names)] and len(names) == round(0.5 * len(order))
    changed = {n for n, p in half.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(names)
    for n, p in bb.model.named_parameters():  # the original is untouched
        assert torch.equal(p, before[n])
    assert torch.equal(half.encode_texts([PROMPT]), bb.encode_texts([PROMPT]))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(half.encode_images(x), bb.encode_images(x))


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_ig_passes_and_edge_map_fails(tiny, defect_image, family):
    bb = tiny[family]
    x = pixels_for(bb, defect_image)
    ig = method_explainer("ig", steps=8 if family == "vit" else 4)

    stages = 3 if family == "vit" else 1  # keeps the larger ResNet input quick
    good_r = randomisation_check(ig, bb, x, PROMPT, mode="cascading", stages=stages)
    assert [s["fraction"] for s in good_r.stages] == pytest.approx(
        [(i + 1) / stages for i in range(stages)]
    )
    assert good_r.passed, good_r
    assert good_r.spearman_full < 0.5
    good_t = text_sensitivity_check(ig, bb, x, PROMPT)
    assert good_t.passed, good_t
    assert good_t.max_correlation < 0.9

    bad_r = randomisation_check(edge_map_control, bb, x, PROMPT, mode="cascading", stages=3)
    assert [s["spearman"] for s in bad_r.stages] == [1.0] * 3
    assert not bad_r.passed
    bad_t = text_sensitivity_check(edge_map_control, bb, x, PROMPT)
    assert bad_t.max_correlation == 1.0
    assert not bad_t.passed


def test_gradcam_survives_nothing_of_the_randomised_tower(tiny_vit, defect_image):
    x = pixels_for(tiny_vit, defect_image)
    res = randomisation_check(method_explainer("gradcam"), tiny_vit, x, PROMPT, mode="full")
    assert len(res.stages) == 1 and res.stages[0]["fraction"] == 1.0
    assert res.passed and res.spearman_full < 0.5


def test_edge_map_control_looks_like_edges(tiny_vit, defect_image):
    """The control is plausible-looking: it lights up the drawn defect's outline."""
    x = pixels_for(tiny_vit, defect_image)
    edges = edge_map_control(tiny_vit, x, PROMPT)
    assert edges.shape == (64, 64) and edges.std() > 0
    assert np.array_equal(edges, edge_map_control(tiny_vit, x, "anything else"))


def test_rollout_is_flagged_as_text_blind(tiny_vit, defect_image):
    x = pixels_for(tiny_vit, defect_image)
    res = text_sensitivity_check(method_explainer("rollout"), tiny_vit, x, PROMPT)
    assert res.max_correlation == 1.0 and not res.passed


class _LinearScorer(nn.Module):
    """score = sum(w * pixels) over channel 0: the ideal map is w itself."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * self.w).sum(dim=(1, 2))[:, None]


def test_deletion_insertion_on_a_known_linear_score(tiny_vit):
    h = w = 8
    weights = torch.zeros(h, w)
    weights[:2, :] = 1.0  # 16 of 64 pixels carry the whole score
    scorer = _LinearScorer(weights)
    x = torch.ones(1, 3, h, w)
    good = deletion_insertion(
        tiny_vit, x, PROMPT, weights.numpy(), steps=4, baseline="mean", scorer=scorer
    )
    # Deleting the top quarter first removes all of the score at fraction 0.25.
    assert good.deletion == pytest.approx([16, 0, 0, 0, 0])
    assert good.insertion == pytest.approx([0, 16, 16, 16, 16])
    assert good.deletion_auc == pytest.approx(16 * 0.25 / 2)
    assert good.insertion_auc == pytest.approx(16 * (1 - 0.25 / 2))
    # A random order removes the score linearly on average.
    assert good.random_deletion_auc == pytest.approx(8.0, abs=1.5)
    assert good.passed
    bad = deletion_insertion(
        tiny_vit, x, PROMPT, -weights.numpy(), steps=4, baseline="mean", scorer=scorer
    )
    assert bad.deletion == pytest.approx([16, 16, 16, 16, 0])
    assert not bad.passed
    with pytest.raises(ExplainError, match="does not match"):
        deletion_insertion(tiny_vit, x, PROMPT, np.zeros((4, 4)), scorer=scorer)


def test_deletion_insertion_on_a_real_model(tiny_vit, defect_image):
    x = pixels_for(tiny_vit, defect_image)
    smap = method_explainer("occlusion", window=16, stride=8)(tiny_vit, x, PROMPT)
    res = deletion_insertion(tiny_vit, x, PROMPT, smap, steps=8)
    assert len(res.deletion) == len(res.insertion) == 9
    with torch.no_grad():
        from domainclip.explain.forward import PromptScorer

        full = PromptScorer(tiny_vit, [PROMPT])(x)[0, 0].item()
    assert res.deletion[0] == pytest.approx(full, rel=1e-4)  # nothing deleted yet
    assert res.insertion[-1] == pytest.approx(full, rel=1e-4)  # everything inserted
    assert res.deletion[-1] == pytest.approx(res.insertion[0], rel=1e-4)  # both: the blur
    # Occlusion ranks pixels by measured score drop, so deleting them first must hurt more.
    assert res.deletion_auc < res.random_deletion_auc
