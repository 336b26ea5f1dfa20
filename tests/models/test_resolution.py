"""Image towers at another input resolution: ViT position embeddings are interpolated (open_clip
and Hugging Face CLIP), CNN towers run as they are; at the native size nothing changes."""

from __future__ import annotations

import pytest
import torch

from domainclip.models import load_backbone, save_backbone
from domainclip.models.resolution import resize_grid_embedding
from domainclip.models.testing import tiny_open_clip_backbone, write_tiny_hf_clip


@pytest.fixture(scope="module")
def hf_bb(tmp_path_factory):
    return load_backbone(f"hf-clip:{write_tiny_hf_clip(tmp_path_factory.mktemp('hf') / 'clip')}")


def _towers(hf_bb):
    return {
        "open_clip vit": tiny_open_clip_backbone("vit"),
        "open_clip cnn (attention pool)": tiny_open_clip_backbone("cnn"),
        "hf_clip vit": hf_bb,
    }


def test_encode_images_at_twice_the_native_size(hf_bb):
    for name, bb in _towers(hf_bb).items():
        s = bb.image_size
        native = bb.encode_images(torch.full((2, 3, s, s), 0.3))
        double = bb.encode_images(torch.full((2, 3, 2 * s, 2 * s), 0.3))
        assert double.shape == native.shape, name
        assert torch.isfinite(double).all(), name
        assert torch.allclose(double.norm(dim=-1), torch.ones(2), atol=1e-5), name
        # A constant image has the same content at any size: the features barely move.
        cos = float((native[0] * double[0]).sum())
        assert cos > 0.95, f"{name}: cosine {cos:.4f} between native and 2x size"
        # a real image at 2x differs from the constant one (the tower still sees content)
        noise = torch.randn(1, 3, 2 * s, 2 * s, generator=torch.Generator().manual_seed(0))
        assert not torch.allclose(bb.encode_images(noise), double[:1], atol=1e-3), name


def test_native_size_is_unchanged_and_weights_keep_their_shape(hf_bb, tmp_path):
    import open_clip

    bb = tiny_open_clip_backbone("vit")
    pos = bb.model.visual.positional_embedding
    x = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(1))
    ours = bb.encode_images(x)
    # open_clip's own forward of the same weights (class swapped back) gives the same numbers
    bb.model.visual.__class__ = open_clip.transformer.VisionTransformer
    assert torch.equal(bb.encode_images(x), ours)
    bb.model.visual.__class__ = type(tiny_open_clip_backbone("vit").model.visual)
    bb.encode_images(torch.zeros(1, 3, 2 * bb.image_size, 2 * bb.image_size))
    assert bb.model.visual.positional_embedding.shape == pos.shape  # never resized in place
    # saved and reloaded, the tower still takes other sizes
    again = load_backbone(str(save_backbone(bb, tmp_path / "saved")))
    assert torch.allclose(again.encode_images(x), ours, atol=1e-6)
    assert again.encode_images(torch.zeros(1, 3, 96, 96)).shape == (1, ours.shape[1])


def test_cnn_default_tower_runs_at_448_px():
    bb = load_backbone("default")
    feats = bb.encode_images(torch.zeros(1, 3, 448, 448))
    assert feats.shape == (1, 256) and torch.isfinite(feats).all()


def test_trained_at_a_new_size_the_gradient_reaches_the_embedding():
    bb = tiny_open_clip_backbone("vit")
    bb.model.train()
    out = bb.model.encode_image(torch.randn(1, 3, 128, 128))
    out.sum().backward()
    grad = bb.model.visual.positional_embedding.grad
    assert grad is not None and grad.abs().sum() > 0


def test_resize_grid_embedding_keeps_the_class_token_and_a_constant_grid():
    pos = torch.cat([torch.full((1, 4), 7.0), torch.ones(16, 4)])  # class token + 4x4 grid
    out = resize_grid_embedding(pos, (4, 4), (8, 6))
    assert out.shape == (1 + 48, 4)
    assert torch.equal(out[0], pos[0])
    assert torch.allclose(out[1:], torch.ones(48, 4), atol=1e-5)
    assert resize_grid_embedding(pos, (4, 4), (4, 4)) is pos
