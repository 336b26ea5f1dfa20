"""WiSE-FT interpolation (full weights and peft LoRA) and the forgetting curve."""

from __future__ import annotations

import copy

import pytest
import torch

from domainclip.datasets.manifest import read_manifest
from domainclip.evaluation.embed import embed_split
from domainclip.evaluation.forgetting import TaskSpec, forgetting_curve, write_forgetting
from domainclip.evaluation.task import build_targets
from domainclip.finetune.interpolate import interpolated, plan_interpolation
from domainclip.models.testing import tiny_open_clip_backbone
from domainclip.scoring.prompts import load_prompt_set
from domainclip.scoring.zeroshot import class_embeddings

PROMPTS = {"version": "t-1", "templates": ["{label} on a metal surface", "a photo of {label}"]}
CLASSES = ["scratch", "pit", "crack", "patch", "clean"]


def _perturbed(bb, prefix: str = "", seed: int = 0, scale: float = 0.05):
    """A 'fine-tuned' copy: every float tensor under `prefix` moved by random noise."""
    ft = copy.deepcopy(bb)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ft.model.named_parameters():
            if name.startswith(prefix):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return ft


@pytest.fixture(scope="module")
def base():
    return tiny_open_clip_backbone("cnn", seed=3)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_full_weights_interpolate_and_restore(base, pixels):
    ft = _perturbed(base)
    texts = ["a scratch", "a clean surface"]
    ft_img, ft_txt = ft.encode_images(pixels), ft.encode_texts(texts)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    plan = plan_interpolation(base, ft)
    assert plan.n_changed == sum(1 for n, _ in base.model.named_parameters())
    with interpolated(ft, plan, 0.0) as bb:
        assert torch.allclose(bb.encode_images(pixels), base.encode_images(pixels), atol=1e-6)
        assert torch.allclose(bb.encode_texts(texts), base.encode_texts(texts), atol=1e-6)
    with interpolated(ft, plan, 0.5) as bb:
        mid = bb.model.state_dict()
        for k, v in base.model.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(mid[k], 0.5 * v + 0.5 * before[k], atol=1e-7), k
    with interpolated(ft, plan, 1.0) as bb:
        assert torch.allclose(bb.encode_images(pixels), ft_img, atol=1e-6)
        assert torch.allclose(bb.encode_texts(texts), ft_txt, atol=1e-6)
    after = ft.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # restored exactly


def test_lora_update_is_scaled_like_interpolated_merged_weights(base):
    from peft import LoraConfig, get_peft_model

    ft = copy.deepcopy(base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*resblocks\.\d+\.attn")
    ft.model.transformer = get_peft_model(ft.model.transformer, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ft.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    texts = ["a pit on metal", "two long scratches"]
    lora_out = ft.encode_texts(texts)
    assert not torch.allclose(lora_out, base.encode_texts(texts), atol=1e-4)
    # Independent reference for alpha = 0.5: merge the full update, halve it in a plain copy.
    merged = copy.deepcopy(ft)
    merged.model.transformer = merged.model.transformer.merge_and_unload()
    half = copy.deepcopy(base)
    with torch.no_grad():
        b_state, m_state = base.model.state_dict(), merged.model.state_dict()
        for k, v in half.model.state_dict().items():
            if v.is_floating_point():
                v.copy_(b_state[k] + 0.5 * (m_state[k] - b_state[k]))
    plan = plan_interpolation(base, ft)
    assert len(plan.lora_b) == 4  # in_proj and out_proj adapters of 2 text blocks
    # peft's MultiheadAttention adds and subtracts the update around each forward, which leaves
    # float rounding in the base weight: blended too, so alpha = 0 is the base exactly.
    ft_state = ft.model.state_dict()
    assert all((ft_state[k] - b).abs().max() < 1e-6 for k, b in plan.blend.items())
    snapshot = {k: v.clone() for k, v in ft_state.items()}
    with interpolated(ft, plan, 0.0) as bb:
        assert torch.allclose(bb.encode_texts(texts), base.encode_texts(texts), atol=1e-5)
    with interpolated(ft, plan, 0.5) as bb:
        assert torch.allclose(bb.encode_texts(texts), half.encode_texts(texts), atol=1e-5)
    with interpolated(ft, plan, 1.0) as bb:
        assert torch.allclose(bb.encode_texts(texts), lora_out, atol=1e-6)
    assert all(torch.equal(v, snapshot[k]) for k, v in ft.model.state_dict().items())


def test_mismatched_models_cannot_be_interpolated(base):
    from domainclip.errors import ConfigError

    other = tiny_open_clip_backbone("vit")
    with pytest.raises(ConfigError, match="no base counterpart"):
        plan_interpolation(base, other)
    plan = plan_interpolation(base, base)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"), interpolated(base, plan, 1.5):
        pass


def _accuracy(bb, manifest, split):
    ps = load_prompt_set(PROMPTS)
    emb = embed_split(bb, read_manifest(manifest), split)
    tgt = build_targets(emb.rows, CLASSES, ps)
    W = class_embeddings(bb, ps.class_texts(CLASSES))
    return float((bb.similarity(emb.image_feats[tgt.keep], W).argmax(1).numpy() == tgt.y).mean())


def test_forgetting_curve_ends_equal_base_and_finetuned(
    base, synthetic_manifest, reference_manifest, tmp_path
):
    ft = _perturbed(base, prefix="transformer", scale=0.2)  # text tower only
    ps = load_prompt_set(PROMPTS)
    target = TaskSpec("syn", read_manifest(synthetic_manifest), "test", ps, CLASSES, True)
    ref = TaskSpec("ref", read_manifest(reference_manifest), "test", ps, CLASSES, False)
    curve = forgetting_curve(base, ft, target, ref, alphas=(0.0, 0.5, 1.0), n_boot=50)
    assert curve["alphas"] == [0.0, 0.5, 1.0]
    assert curve["image_features_reused"] is True  # the image tower was not changed
    assert curve["target"][0]["value"] == pytest.approx(_accuracy(base, synthetic_manifest, "test"))
    assert curve["target"][-1]["value"] == pytest.approx(_accuracy(ft, synthetic_manifest, "test"))
    assert curve["reference"][0]["value"] == pytest.approx(
        _accuracy(base, reference_manifest, "test")
    )
    assert curve["reference"][-1]["value"] == pytest.approx(
        _accuracy(ft, reference_manifest, "test")
    )
    files = write_forgetting(curve, tmp_path)
    assert (tmp_path / "forgetting.json").is_file() and files["forgetting_plot"].endswith(".png")
