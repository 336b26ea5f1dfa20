"""Tiny random backbones for tests and examples (no downloads, built in well under a second).

They use the same code paths as real checkpoints: a tiny open_clip CLIP (ViT or ResNet image
tower, open_clip's own BPE tokenizer, which ships with the package) and a tiny Hugging Face
CLIPModel directory (with the bundled MiniLM WordPiece tokenizer, so no vocabulary download).
"""

from __future__ import annotations

from pathlib import Path

import torch

from domainclip.models.backbone import Backbone, _finish_open_clip


def tiny_open_clip_config(
    image_arch: str = "vit", image_size: int = 64, embed_dim: int = 32
) -> dict:
    """open_clip model config of a ~2M-parameter CLIP. image_arch: "vit" or "cnn" (ModifiedResNet)."""
    if image_arch == "vit":
        vision = {
            "image_size": image_size,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 16,
        }
    elif image_arch == "cnn":
        vision = {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    else:
        raise ValueError(f"image_arch must be 'vit' or 'cnn', not {image_arch!r}")
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}


def tiny_open_clip_backbone(
    image_arch: str = "vit", image_size: int = 64, seed: int = 0
) -> Backbone:
    """A randomly initialised tiny open_clip backbone (deterministic for a given seed)."""
    import open_clip

    cfg = tiny_open_clip_config(image_arch, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(
            embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"]
        )
    model.visual.preprocess_cfg = {
        "size": image_size,
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
    }
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return _finish_open_clip(model, f"tiny-open_clip-{image_arch}", tok, cfg)


def write_tiny_hf_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random HF CLIPModel directory (model + tokenizer) that `hf-clip:PATH` loads."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from domainclip.models.default import minilm_dir

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": tok.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.cls_token_id,
            "eos_token_id": tok.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
