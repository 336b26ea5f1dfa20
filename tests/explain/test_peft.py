"""Explainers on peft-wrapped towers (as fine-tuned runs load them) see the adapted model.

Towers are wrapped the way `domainclip.finetune` does it (peft `get_peft_model` on a tower
submodule); the LoRA B matrices are made non-zero so the adapters change the function. The maps
of the wrapped model must equal those of the same model with the adapters merged into the weights.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from domainclip.explain import ImageExplainer
from domainclip.models.testing import tiny_open_clip_backbone
from tests.explain.conftest import PROMPT, pixels_for

# (family, wrap point, LoRA targets relative to it), as in the fine-tuning presets.
WRAPS = {
    "vit": ("visual.transformer", r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)"),
    "cnn": ("visual", r".*layer\d\.\d+\.(conv1|conv3)"),
    "hf": ("clip.vision_model", r".*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"),
}
METHODS = {
    "vit": ("gradcam", "chefer", "rollout"),
    "cnn": ("gradcam",),
    "hf": ("gradcam", "chefer"),
}


def _wrapped(bb, family):
    """(peft-wrapped copy, merged copy) of `bb` with random non-zero LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    path, targets = WRAPS[family]
    parent_path, _, name = path.rpartition(".")
    model = copy.deepcopy(bb.model)
    parent = model.get_submodule(parent_path)
    peft_model = get_peft_model(getattr(parent, name), LoraConfig(r=4, target_modules=targets))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:  # peft initialises B to zero (a no-op adapter)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    setattr(parent, name, peft_model)
    model.eval()
    merged = copy.deepcopy(model)
    merged_parent = merged.get_submodule(parent_path)
    setattr(merged_parent, name, getattr(merged_parent, name).merge_and_unload())
    return dataclasses.replace(bb, model=model), dataclasses.replace(bb, model=merged)


def _explain(ex, x, method):
    # Signed GradCAM: equality is checked on the whole map, not only its positive part.
    options = {"relu": False} if method == "gradcam" else {}
    return ex.explain(x, PROMPT, method, **options)


@pytest.mark.parametrize("family", ["vit", "cnn", "hf"])
def test_maps_of_wrapped_towers_equal_merged_ones(tiny, defect_image, family):
    base = tiny[family]
    if family == "cnn":  # 64 px is enough here; equality does not need a 3x3 stage
        base = tiny_open_clip_backbone("cnn", image_size=64)
        # open_clip zero-initialises each residual branch's last BatchNorm, so LoRA on the
        # branch convs would be invisible in an untrained ResNet; give the branches a weight.
        with torch.no_grad():
            for name, module in base.model.named_modules():
                if name.endswith("bn3"):
                    module.weight.fill_(1.0)
    wrapped, merged = _wrapped(base, family)
    x = pixels_for(base, defect_image)
    ex_w, ex_m, ex_b = ImageExplainer(wrapped), ImageExplainer(merged), ImageExplainer(base)
    if family == "cnn":
        assert ex_w.conv_layer().name.endswith("layer4")
    for method in METHODS[family]:
        w, m, b = (_explain(ex, x, method) for ex in (ex_w, ex_m, ex_b))
        assert w.score == pytest.approx(m.score, rel=1e-4, abs=1e-5)
        scale = np.abs(m.map).max()
        np.testing.assert_allclose(w.map, m.map, atol=1e-3 * scale)
        assert np.abs(w.map - b.map).max() > 1e-2 * scale, f"{method}: the adapters had no effect"
