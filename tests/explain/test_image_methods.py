"""Every image method on tiny open_clip ViT / ResNet and HF CLIP towers: shape, values, text use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainclip.datasets import ImageReadError
from domainclip.explain import ExplainError, ImageExplainer, MethodNotApplicableError, methods_for
from domainclip.explain.image import make_baseline
from domainclip.explain.inputs import prepare_image
from tests.explain.conftest import OTHER, PROMPT, pixels_for

# Small settings keep the suite fast; the defaults are exercised by the CLI test and benchmark.
OPTIONS = {
    "ig": {"steps": 4},
    "gradcam": {},
    "rollout": {},
    "chefer": {},
}
CASES = [
    (family, method)
    for family, methods in (
        ("vit", ("gradcam", "ig", "occlusion", "rollout", "chefer")),
        ("cnn", ("gradcam", "ig", "occlusion")),
        ("hf", ("gradcam", "ig", "occlusion", "rollout", "chefer")),
    )
    for method in methods
]


def _options(bb, method):
    if method == "occlusion":  # 4x4 non-overlapping windows: 16 forward passes
        return {"window": bb.image_size // 4, "stride": bb.image_size // 4}
    return dict(OPTIONS[method])


@pytest.mark.parametrize(("family", "method"), CASES)
def test_method_gives_input_sized_finite_map(tiny, defect_image, family, method):
    bb = tiny[family]
    ex = ImageExplainer(bb)
    x = pixels_for(bb, defect_image)
    a = ex.explain(x, PROMPT, method, **_options(bb, method))
    assert a.map.shape == (bb.image_size, bb.image_size)
    assert a.map.dtype == np.float32
    assert np.isfinite(a.map).all()
    assert a.map.std() > 0, "map is constant"
    assert a.method == method and a.prompt == PROMPT
    with torch.no_grad():
        expected = ex.scorer([PROMPT])(x)[0, 0].item()
    assert a.score == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert a.seconds >= 0
    b = ex.explain(x, OTHER, method, **_options(bb, method))
    diff = np.abs(a.map - b.map).max() / (np.abs(a.map).max() + 1e-12)
    if method == "rollout":
        # Attention rollout uses no gradient: it cannot see the text (the sanity check flags it).
        assert diff == 0
    else:
        assert diff > 1e-3, f"{method} ignores the text"


def test_methods_for_each_tower(tiny):
    assert methods_for(tiny["vit"]) == ("gradcam", "ig", "occlusion", "rollout", "chefer")
    assert methods_for(tiny["hf"]) == methods_for(tiny["vit"])
    assert methods_for(tiny["cnn"]) == ("gradcam", "ig", "occlusion")


@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_attention_methods_on_cnn_name_the_alternatives(tiny_cnn, defect_image, method):
    x = pixels_for(tiny_cnn, defect_image)
    with pytest.raises(MethodNotApplicableError) as err:
        ImageExplainer(tiny_cnn).explain(x, PROMPT, method)
    msg = str(err.value)
    assert "CNN" in msg
    for alt in ("gradcam", "ig", "occlusion"):
        assert alt in msg


def test_bad_inputs_raise_clear_errors(tiny_vit, defect_image, tmp_path):
    ex = ImageExplainer(tiny_vit)
    x = pixels_for(tiny_vit, defect_image)
    with pytest.raises(ExplainError, match="empty"):
        ex.explain(x, "   ", "gradcam")
    with pytest.raises(ExplainError, match="unknown method"):
        ex.explain(x, PROMPT, "lime")
    with pytest.raises(ExplainError, match="does not take"):
        ex.explain(x, PROMPT, "gradcam", steps=3)
    with pytest.raises(ExplainError, match="two prompts"):
        ex.explain(x, PROMPT, "gradcam", score="probability")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        prepare_image(tiny_vit, bad)


def test_vit_gradcam_equals_manual_token_gradcam(tiny_vit, defect_image):
    """The identity-module reshape must give textbook GradCAM on the last block's input tokens."""
    bb = tiny_vit
    x = pixels_for(bb, defect_image)
    ex = ImageExplainer(bb)
    got = ex.explain(x, PROMPT, "gradcam").map
    block = bb.model.visual.transformer.resblocks[-1]
    seen = {}

    def keep(_m, args):
        args[0].retain_grad()
        seen["tokens"] = args[0]

    handle = block.register_forward_pre_hook(keep)
    try:
        ex.scorer([PROMPT])(x)[0, 0].backward()
    finally:
        handle.remove()
        bb.model.zero_grad(set_to_none=True)
    tokens, grads = seen["tokens"][0, 1:], seen["tokens"].grad[0, 1:]  # drop the class token
    cam = torch.relu((tokens * grads.mean(0)).sum(-1)).reshape(1, 1, 4, 4)
    want = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear")[0, 0]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_cnn_gradcam_uses_last_stage_and_matches_manual(tiny_cnn, defect_image):
    bb = tiny_cnn
    ex = ImageExplainer(bb)
    assert ex.conv_layer().name == "layer4"
    x = pixels_for(bb, defect_image)
    got = ex.explain(x, PROMPT, "gradcam").map
    seen = {}

    def keep(_m, _i, out):
        out.retain_grad()
        seen["act"] = out

    handle = bb.model.visual.layer4.register_forward_hook(keep)
    try:
        ex.scorer([PROMPT])(x)[0, 0].backward()
    finally:
        handle.remove()
        bb.model.zero_grad(set_to_none=True)
    act, grad = seen["act"][0], seen["act"].grad[0]
    cam = torch.relu((act * grad.mean(dim=(1, 2), keepdim=True)).sum(0))[None, None]
    want = torch.nn.functional.interpolate(cam, size=(96, 96), mode="bilinear")[0, 0]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-7)


def test_all_negative_gradcam_is_flagged(defect_image):
    """A 2x2 last stage of an untrained ResNet often has only negative evidence: say so."""
    from domainclip.models.testing import tiny_open_clip_backbone

    bb = tiny_open_clip_backbone("cnn", image_size=64)
    x = pixels_for(bb, defect_image)
    ex = ImageExplainer(bb)
    for prompt in (PROMPT, OTHER):
        sal = ex.explain(x, prompt, "gradcam")
        assert (sal.map.max() == 0) == ("note" in sal.params)
        signed = ex.explain(x, prompt, "gradcam", relu=False)
        assert signed.map.std() > 0
        if sal.map.max() == 0:
            assert signed.map.max() < 0


@pytest.mark.parametrize("family", ["vit", "cnn", "hf"])
def test_ig_is_complete(tiny, defect_image, family):
    """IG's attributions sum to score(image) - score(baseline) (completeness axiom)."""
    bb = tiny[family]
    ex = ImageExplainer(bb)
    x = pixels_for(bb, defect_image)
    sal = ex.explain(x, PROMPT, "ig", steps=16, baseline="blur", internal_batch_size=16)
    scorer = ex.scorer([PROMPT])
    with torch.no_grad():
        gap = (scorer(x) - scorer(make_baseline(x, "blur", bb)))[0, 0].item()
    assert float(sal.map.sum()) == pytest.approx(gap, rel=0.05, abs=1e-4)
    assert sal.params["convergence_delta"] < 0.05 * abs(gap) + 1e-4


def test_probability_score_attributes_the_softmax(tiny_vit, defect_image):
    bb = tiny_vit
    ex = ImageExplainer(bb)
    x = pixels_for(bb, defect_image)
    sal = ex.explain(
        x, PROMPT, "ig", others=[OTHER], score="probability", temperature=0.5, steps=16
    )
    scorer = ex.scorer([PROMPT, OTHER], score="probability", temperature=0.5)
    with torch.no_grad():
        p = scorer(x)
        p0 = scorer(make_baseline(x, "black", bb))
    assert sal.score == pytest.approx(p[0, 0].item(), rel=1e-5)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(sal.map.sum()) == pytest.approx((p - p0)[0, 0].item(), rel=0.05, abs=1e-4)


def test_whole_image_occlusion_is_the_score_drop(tiny_vit, defect_image):
    bb = tiny_vit
    ex = ImageExplainer(bb)
    x = pixels_for(bb, defect_image)
    sal = ex.explain(x, PROMPT, "occlusion", window=64, stride=64, baseline="black")
    scorer = ex.scorer([PROMPT])
    with torch.no_grad():
        drop = (scorer(x) - scorer(make_baseline(x, "black", bb)))[0, 0].item()
    np.testing.assert_allclose(sal.map, drop, rtol=1e-4, atol=1e-6)


def test_contrast_map_is_the_difference(tiny_vit, defect_image):
    ex = ImageExplainer(tiny_vit)
    x = pixels_for(tiny_vit, defect_image)
    c = ex.contrast(x, PROMPT, OTHER, "gradcam")
    np.testing.assert_array_equal(c.diff, c.a.map - c.b.map)
    assert c.a.prompt == PROMPT and c.b.prompt == OTHER
    assert np.abs(c.diff).max() > 0


def test_explaining_leaves_the_model_as_it_was(tiny_hf, defect_image):
    bb = tiny_hf
    x = pixels_for(bb, defect_image)
    bb.model.train()
    before = bb.model.clip.vision_model.config._attn_implementation
    try:
        ImageExplainer(bb).explain(x, PROMPT, "chefer")
        assert bb.model.training
        assert bb.model.clip.vision_model.config._attn_implementation == before
    finally:
        bb.model.eval()
