"""Tower layouts, trainability per method, the cached-feature path, LoRA targets."""

from __future__ import annotations

import pytest
import torch

from domainclip.errors import ConfigError
from domainclip.finetune.adaptation import prepare
from domainclip.finetune.config import load_config
from domainclip.models import load_backbone
from domainclip.models.testing import tiny_open_clip_backbone, write_tiny_hf_clip

M = ["data.manifest=m.csv"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "clip")


def _backbone(kind, hf_dir):
    if kind == "hf":
        return load_backbone(f"hf-clip:{hf_dir}")
    return tiny_open_clip_backbone(kind)


@pytest.mark.parametrize("kind", ["vit", "cnn", "hf"])
@pytest.mark.parametrize(
    "overrides",
    [
        ["method.image_tower=lora"],  # LoRA on both towers
        ["method.name=full"],
        ["method.name=clip_adapter", "method.clip_adapter.text=true"],
    ],
)
def test_cached_path_equals_encode(kind, overrides, hf_dir):
    """image_from_pooled(pooled_image(x)) == encode_image(x): the feature cache is exact."""
    bb = _backbone(kind, hf_dir)
    adapt = prepare(bb, load_config(None, [*M, *overrides]).method)
    for p in adapt.trainable_parameters().values():  # make adapters non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    adapt.set_train(False)
    x = torch.randn(2, 3, bb.image_size, bb.image_size)
    ids = bb.tokenizer(["a scratch", "two pits in the upper left"])
    with torch.no_grad():
        assert torch.allclose(
            adapt.model.encode_image(x), adapt.image_from_pooled(adapt.pooled_image(x)), atol=1e-5
        )
        assert torch.allclose(
            adapt.model.encode_text(ids), adapt.text_from_pooled(adapt.pooled_text(ids)), atol=1e-5
        )
    # the bypass restored the projection
    with torch.no_grad():
        assert adapt.model.encode_image(x).shape[-1] == adapt.model.encode_text(ids).shape[-1]


def test_default_recipe_trains_text_lora_projections_and_scale_only():
    bb = tiny_open_clip_backbone("vit")
    adapt = prepare(bb, load_config(None, M).method)
    names = list(adapt.trainable_parameters())
    assert "logit_scale" in names and "visual.proj" in names and "text_projection" in names
    assert all(
        n.startswith(("visual.proj", "text_projection", "logit_scale")) or "lora_" in n
        for n in names
    )
    assert not any(n.startswith("visual.") and "lora_" in n for n in names)  # image tower locked
    counts = adapt.parameter_counts()
    assert 0 < counts["fraction"] < 0.05
    assert counts["trainable"] == sum(p.numel() for p in adapt.trainable_parameters().values())


def test_locked_towers_stay_in_eval_mode():
    bb = tiny_open_clip_backbone("cnn")
    adapt = prepare(bb, load_config(None, [*M, "method.image_tower=lora"]).method)
    adapt.set_train(True)
    bns = [m for m in bb.model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # LoRA tower: BatchNorm statistics frozen
    adapt2 = prepare(tiny_open_clip_backbone("vit"), load_config(None, M).method)
    adapt2.set_train(True)
    assert not any(m.training for m in adapt2.base.visual.modules())
    assert adapt2.base.transformer.training  # the LoRA text tower trains


def test_projection_lock_and_scale_lock():
    bb = tiny_open_clip_backbone("vit")
    cfg = load_config(
        None, [*M, "method.train_projections=false", "method.train_logit_scale=false"]
    )
    names = list(prepare(bb, cfg.method).trainable_parameters())
    assert names and all("lora_" in n for n in names)


def test_lora_target_matching_nothing_is_a_clear_error():
    bb = tiny_open_clip_backbone("vit")
    cfg = load_config(None, [*M, "method.lora.text_targets=.*no_such_layer"])
    with pytest.raises(ConfigError, match=r"method.lora.text_targets.*matches no module"):
        prepare(bb, cfg.method)


def test_default_backbone_presets_cover_minilm_and_pointwise_convs():
    """The embedded default: BERT query/key/value/dense and EfficientNet 1x1 convs, never depthwise."""
    bb = load_backbone("default")
    adapt = prepare(bb, load_config(None, [*M, "method.image_tower=lora"]).method)
    names = [n for n in adapt.trainable_parameters() if "lora_A" in n]
    text = [n for n in names if n.startswith("text.")]
    image = [n for n in names if n.startswith("visual.")]
    for piece in ("query", "key", "value", "attention.output.dense", "intermediate.dense"):
        assert any(piece in n for n in text), piece
    assert any("conv_pwl" in n for n in image) and not any("conv_dw" in n for n in image)
    assert not any("pooler" in n for n in text)
