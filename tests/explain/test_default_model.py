"""The embedded default (EfficientNet-Lite0 + MiniLM, 224 px): GradCAM, IG and token attribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainclip.explain import ImageExplainer, MethodNotApplicableError, token_attribution
from domainclip.models import load_backbone
from tests.explain.conftest import OTHER, PROMPT, pixels_for


@pytest.fixture(scope="module")
def default_bb():
    return load_backbone("default")


@pytest.fixture(scope="module")
def explainer(default_bb):
    return ImageExplainer(default_bb)


def test_gradcam_on_the_last_conv_stage(explainer, default_bb, defect_image):
    layer = explainer.conv_layer()
    assert layer.name == "trunk.bn2"  # BatchNorm + ReLU6 after conv_head: 1280 x 7 x 7
    assert layer.shape == (1, 1280, 7, 7)
    x = pixels_for(default_bb, defect_image)
    assert x.shape == (1, 3, 224, 224)
    a = explainer.explain(x, PROMPT, "gradcam", relu=False)
    b = explainer.explain(x, OTHER, "gradcam", relu=False)
    for sal in (a, b):
        assert sal.map.shape == (224, 224) and sal.map.dtype == np.float32
        assert np.isfinite(sal.map).all() and sal.map.std() > 0
    assert np.abs(a.map - b.map).max() > 1e-3 * np.abs(a.map).max()
    relu = explainer.explain(x, PROMPT, "gradcam")
    assert relu.map.min() >= 0
    with torch.no_grad():
        sims = default_bb.similarity(default_bb.encode_images(x), default_bb.encode_texts([PROMPT]))
    assert a.score == pytest.approx(float(sims[0, 0]), rel=1e-4, abs=1e-5)


def test_integrated_gradients_few_steps(explainer, default_bb, defect_image):
    x = pixels_for(default_bb, defect_image)
    sal = explainer.explain(x, PROMPT, "ig", steps=4, internal_batch_size=4)
    assert sal.map.shape == (224, 224)
    assert np.isfinite(sal.map).all() and sal.map.std() > 0
    assert sal.params["steps"] == 4 and sal.params["baseline"] == "black"


def test_attention_methods_are_refused(explainer, default_bb, defect_image):
    x = pixels_for(default_bb, defect_image)
    with pytest.raises(MethodNotApplicableError, match="gradcam, ig, occlusion"):
        explainer.explain(x, PROMPT, "rollout")


def test_token_attribution_with_wordpiece(default_bb, defect_image):
    text = "two long scratches near the upper left corner of a steel strip"
    ta = token_attribution(default_bb, pixels_for(default_bb, defect_image), text, steps=32)
    assert ta.words == text.split()
    assert np.isfinite(ta.scores).all() and len(set(ta.scores)) > 1
    # 32 steps: the sum matches the score gap (8 steps were off by ~100% on MiniLM).
    assert sum(ta.scores) == pytest.approx(ta.score - ta.baseline_score, rel=0.05, abs=0.01)
