"""Hugging Face `CLIPModel` behind the open_clip interface (encode_image / encode_text / logit_scale)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from domainclip.errors import BackboneError

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _pooled(out: object) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output holds the projected features;
    # older versions return the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFCLIPModel(nn.Module):
    """Adapter so an HF CLIPModel is used exactly like an open_clip CLIP.

    Args:
        clip: a `transformers.CLIPModel`.
        pad_id: padding id of the tokenizer; the attention mask is derived from it because the
            rest of domainclip passes token ids only (as open_clip does).
    """

    def __init__(self, clip: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.clip = clip
        self.pad_id = int(pad_id)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """image: [B, 3, H, W] normalised pixels -> [B, D] features.

        Any square size: away from the native size the position embeddings are interpolated
        (transformers' `interpolate_pos_encoding`); at the native size the original path runs.
        """
        native = int(self.clip.config.vision_config.image_size)
        other = tuple(image.shape[-2:]) != (native, native)
        feats = _pooled(
            self.clip.get_image_features(pixel_values=image, interpolate_pos_encoding=other)
        )
        return nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """text: [B, L] token ids -> [B, D] features."""
        mask = (text != self.pad_id).long()
        feats = _pooled(self.clip.get_text_features(input_ids=text, attention_mask=mask))
        return nn.functional.normalize(feats, dim=-1) if normalize else feats

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """Same contract as open_clip's CLIP.forward: (image_features, text_features, logit_scale.exp())."""
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()


def load_hf_clip(path: Path) -> tuple[HFCLIPModel, object, dict]:
    """Load a local HF CLIP directory. Returns (wrapped model, HF tokenizer, preprocess dict)."""
    from transformers import AutoTokenizer, CLIPModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"{path} is not a Hugging Face CLIP directory (no config.json). Save one with "
            "CLIPModel.save_pretrained(DIR) and the tokenizer's save_pretrained(DIR)."
        )
    try:
        clip = CLIPModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load a CLIPModel from {path}: {exc}") from exc
    vocab_files = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model")
    if not any((path / f).is_file() for f in vocab_files):
        # transformers 5 would silently build an empty 2-token tokenizer here.
        raise BackboneError(
            f"no tokenizer in {path} (none of {', '.join(vocab_files)}): save it there with "
            f"tokenizer.save_pretrained('{path}')"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f"no tokenizer in {path}: save it there with tokenizer.save_pretrained('{path}') ({exc})"
        ) from exc
    pre = {
        "size": int(clip.config.vision_config.image_size),
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
    }
    proc = path / "preprocessor_config.json"
    if proc.is_file():
        cfg = json.loads(proc.read_text())
        pre["mean"] = tuple(cfg.get("image_mean", OPENAI_MEAN))
        pre["std"] = tuple(cfg.get("image_std", OPENAI_STD))
    pad = tok.pad_token_id if tok.pad_token_id is not None else clip.config.text_config.pad_token_id
    clip.eval()
    return HFCLIPModel(clip, pad_id=pad or 0), tok, pre
