"""WiSE-FT interpolation of the methods that scale themselves (CLIP-Adapter ratio, Tip-Adapter cache
weight) and of a head that does not (linear probe). Full weights and LoRA: tests/evaluation/test_forgetting.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from domainclip.finetune.adaptation import base_name, prepare
from domainclip.finetune.config import load_config
from domainclip.finetune.interpolate import interpolated, plan_interpolation
from domainclip.finetune.methods.linear_probe import LinearProbeHead
from domainclip.finetune.methods.tip_adapter import TipAdapterHead
from domainclip.models.testing import tiny_open_clip_backbone

TEXTS = ["a scratch", "two pits", "a clean surface"]


@pytest.fixture(scope="module")
def base():
    return tiny_open_clip_backbone("cnn", seed=3)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _clip_adapter(base):
    cfg = load_config(
        None,
        ["data.manifest=m.csv", "method.name=clip_adapter", "method.clip_adapter.text=true"],
    )
    adapt = prepare(copy.deepcopy(base), cfg.method, trainable=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapt.model.named_parameters():
            if "adapter" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return adapt


def test_clip_adapter_ratio_scales_from_base_to_finetuned(base, pixels):
    adapt = _clip_adapter(base)
    ft = adapt.bb
    ratio = ft.model.image_adapter.ratio
    assert base_name(ft.model, "clip.visual.proj") == "visual.proj"
    ft_img, ft_txt = ft.encode_images(pixels), ft.encode_texts(TEXTS)
    assert not torch.allclose(ft_img, base.encode_images(pixels), atol=1e-4)
    plan = plan_interpolation(base, ft)
    assert plan.blend == {} and plan.lora_b == []  # only the adapters differ from the base
    assert set(plan.scaled) == {ft.model.image_adapter, ft.model.text_adapter}
    assert plan.n_changed == 2
    with interpolated(ft, plan, 0.0) as bb:
        assert torch.allclose(bb.encode_images(pixels), base.encode_images(pixels), atol=1e-6)
        assert torch.allclose(bb.encode_texts(TEXTS), base.encode_texts(TEXTS), atol=1e-6)
    with interpolated(ft, plan, 0.5) as bb:
        assert bb.model.image_adapter.ratio == pytest.approx(0.5 * ratio)
        f = base.model.encode_image(pixels)
        a = bb.model.image_adapter
        want = F.normalize(0.5 * ratio * a.fc(f) + (1 - 0.5 * ratio) * f, dim=-1)
        assert torch.allclose(bb.encode_images(pixels), want, atol=1e-5)
    with interpolated(ft, plan, 1.0) as bb:
        assert torch.allclose(bb.encode_images(pixels), ft_img, atol=1e-6)
        assert torch.allclose(bb.encode_texts(TEXTS), ft_txt, atol=1e-6)
    assert ft.model.image_adapter.ratio == ratio and ft.model.text_adapter.ratio == ratio


def test_tip_adapter_cache_weight_scales_and_is_restored(base, pixels):
    ft = copy.deepcopy(base)
    feats = base.encode_images(pixels)
    g = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(6, feats.shape[1], generator=g), dim=-1)
    values = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    ft.head = TipAdapterHead(keys, values, ["a", "b", "c"], alpha=2.0, beta=5.0, scale=10.0)
    W = base.encode_texts(TEXTS)
    plan = plan_interpolation(base, ft)
    assert plan.scaled == [ft.head] and plan.n_changed == 1
    assert any("cache weight alpha" in n for n in plan.notes)
    zero_shot = 10.0 * feats @ W.T
    cache = ft.head.cache_logits(feats)
    for a in (0.0, 0.25, 1.0):
        with interpolated(ft, plan, a) as bb:
            want = zero_shot + 2.0 * a * cache
            assert torch.allclose(bb.class_logits(feats, W), want, atol=1e-5), a
    assert ft.head.alpha == 2.0


def test_linear_probe_head_is_reported_and_left_alone(base, pixels):
    ft = copy.deepcopy(base)
    feats = base.encode_images(pixels)
    ft.head = LinearProbeHead(torch.randn(3, feats.shape[1]), torch.zeros(3), ["a", "b", "c"])
    before = ft.head(feats, torch.zeros(3, feats.shape[1]))
    plan = plan_interpolation(base, ft)
    assert plan.n_changed == 0 and plan.scaled == []
    assert any("LinearProbeHead is not interpolated" in n for n in plan.notes)
    with interpolated(ft, plan, 0.0) as bb:
        assert torch.equal(bb.head(feats, torch.zeros(3, feats.shape[1])), before)
