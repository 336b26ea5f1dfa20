"""Backbone factory: the same code path serves the embedded default, open_clip and HF CLIP."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from domainclip.datasets.transforms import eval_transform, train_transform
from domainclip.errors import BackboneError, ConfigError
from domainclip.models import load_backbone, save_backbone
from domainclip.models.testing import tiny_open_clip_backbone, write_tiny_hf_clip


@pytest.fixture(scope="module")
def default_bb():
    return load_backbone("default")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "clip")


def _backbones(default_bb, hf_dir):
    return [
        default_bb,
        tiny_open_clip_backbone("vit"),
        tiny_open_clip_backbone("cnn"),
        load_backbone(f"hf-clip:{hf_dir}"),
    ]


def test_all_families_share_one_interface(default_bb, hf_dir):
    img = Image.new("RGB", (120, 90), (200, 40, 10))
    texts = ["a scratch on a steel surface", "a clean surface with no defects at all"]
    for bb in _backbones(default_bb, hf_dir):
        x = torch.stack([eval_transform(bb)(img), train_transform(bb, "industrial", seed=0)(img)])
        assert x.shape == (2, 3, bb.image_size, bb.image_size)
        fi = bb.encode_images(x)
        ft = bb.encode_texts(texts)
        assert fi.shape[1] == ft.shape[1]
        assert torch.allclose(fi.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(ft.norm(dim=-1), torch.ones(2), atol=1e-5)
        logits = bb.similarity(fi, ft)
        assert logits.shape == (2, 2)
        assert logits.abs().max() <= bb.logit_scale_value() + 1e-4
        # Deterministic in eval mode.
        assert torch.equal(bb.encode_texts(texts), ft)
        assert bb.family in ("default", "open_clip", "hf_clip")


def test_trimmed_padding_gives_identical_text_features(default_bb, hf_dir):
    """Padding to the batch's longest text must not change features (it only saves compute)."""
    short, long = (
        "a pit",
        "three small pits spread across a metal surface near the lower right corner",
    )
    for bb in (default_bb, load_backbone(f"hf-clip:{hf_dir}")):
        alone = bb.encode_texts([short])
        padded = bb.encode_texts([short, long])[:1]
        assert bb.tokenizer([short]).shape[1] < bb.tokenizer([short, long]).shape[1]
        assert torch.allclose(alone, padded, atol=1e-5)


def test_default_is_deterministic_across_loads(default_bb):
    again = load_backbone("default")
    for a, b in zip(
        default_bb.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["vit", "cnn"])
def test_open_clip_save_roundtrip_and_open_clip_can_load_it(tmp_path, arch):
    import open_clip

    bb = tiny_open_clip_backbone(arch)
    out = save_backbone(bb, tmp_path / "saved")
    x = torch.randn(2, 3, 64, 64)
    again = load_backbone(str(out))
    assert again.family == "open_clip" and again.image_arch == arch
    assert torch.allclose(again.encode_images(x), bb.encode_images(x))
    # open_clip itself reads the directory too (users can leave domainclip behind).
    model = open_clip.create_model(f"local-dir:{out}")
    model.eval()
    with torch.no_grad():
        ref = model.encode_image(x, normalize=True)
    assert torch.allclose(ref, bb.encode_images(x), atol=1e-6)


def test_open_clip_local_checkpoint_spec(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("RN50", pretrained_image=False, pretrained_text=False)
    ckpt = tmp_path / "rn50.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    bb = load_backbone(f"open_clip:RN50@{ckpt}")
    assert bb.image_arch == "cnn" and bb.image_size == 224
    assert torch.equal(bb.model.state_dict()["logit_scale"], model.state_dict()["logit_scale"])


def test_default_save_roundtrip_has_no_absolute_site_packages_path(tmp_path, default_bb):
    out = save_backbone(default_bb, tmp_path / "d")
    cfg = (out / "open_clip_config.json").read_text()
    assert "site-packages" not in cfg
    again = load_backbone(str(out))
    assert again.family == "default"
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(again.encode_images(x), default_bb.encode_images(x), atol=1e-6)


def test_hf_save_roundtrip(tmp_path, hf_dir):
    bb = load_backbone(f"hf-clip:{hf_dir}")
    out = save_backbone(bb, tmp_path / "h")
    again = load_backbone(str(out))
    assert again.family == "hf_clip"
    assert torch.allclose(again.encode_texts(["abc def"]), bb.encode_texts(["abc def"]))


@pytest.mark.parametrize(
    ("spec", "exc", "fragment"),
    [
        ("open_clip:ViT-B-32", ConfigError, "@random"),
        ("open_clip:ViT-B-32@laion2b_s34b_b79k", BackboneError, "not available offline"),
        ("open_clip:ViT-B-32@/nope/weights.safetensors", BackboneError, "not found"),
        ("open_clip:NoSuchArch@random", BackboneError, "unknown open_clip architecture"),
        ("hf-hub:org/model", BackboneError, "never downloads"),
        ("/definitely/not/here", ConfigError, "Valid forms"),
    ],
)
def test_bad_specs_give_clear_errors(spec, exc, fragment):
    with pytest.raises(exc, match=fragment):
        load_backbone(spec)


def test_hf_dir_without_tokenizer_is_explained(tmp_path, hf_dir):
    import shutil

    d = tmp_path / "notok"
    d.mkdir()
    for f in hf_dir.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, d / f.name)
    with pytest.raises(BackboneError, match="tokenizer"):
        load_backbone(f"hf-clip:{d}")


def test_word_spans_merge_pieces(default_bb, hf_dir):
    tok = default_bb.tokenizer
    ids = tok(["unaligned crazing"])[0]
    words = [w for w, _ in tok.word_spans(ids)]
    assert words == ["unaligned", "crazing"]
    oc = tiny_open_clip_backbone("vit").tokenizer
    ids = oc(["unaligned crazing"])[0]
    assert [w for w, _ in oc.word_spans(ids)] == ["unaligned", "crazing"]
    assert oc.count_tokens("a b c") == 5


def test_load_tokenizer_matches_backbone_tokenizer(default_bb):
    from domainclip.models import load_tokenizer

    tok = load_tokenizer("default")
    text = ["three small pits spread across a metal surface"]
    assert torch.equal(tok(text), default_bb.tokenizer(text))
    assert tok.context_length == default_bb.tokenizer.context_length


def test_a_missing_tag_never_touches_the_offline_switch(monkeypatch):
    """Offline mode is set once at import; loading must not flip HF_HUB_OFFLINE (a race between
    the dashboard's threads) and must refuse a tag absent from the cache without the hub."""
    import os

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(BackboneError, match="not available offline"):
        load_backbone("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert os.environ["HF_HUB_OFFLINE"] == "0"
