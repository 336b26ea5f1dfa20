"""Image towers at any input resolution (the input size is a setting, not a property of the model).

Convolutional trunks with global average pooling (the default EfficientNet-Lite0, timm CNNs) take
any size as they are. Towers with learned position embeddings on a patch or feature grid need
them resampled to the grid of the actual input; the weights stay those of the native grid, so
checkpoints, LoRA and saved backbones do not change:

- open_clip `VisionTransformer`: `positional_embedding` [1 + gh*gw, C] (class token + grid),
- open_clip `ModifiedResNet` attention pooling (`AttentionPool2d`, CLIP's RN50 & co.): the same
  layout on the final feature map,
- Hugging Face CLIP: `interpolate_pos_encoding=True` (`domainclip.models.hf_clip`).

At the native size the original open_clip code runs unchanged (same numbers, bit for bit); at other
sizes the grid part is resampled bicubically (as open_clip's `resize_pos_embed` does when loading
a checkpoint at a new size), differentiably, so fine-tuning at that size trains the embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from open_clip.transformer import VisionTransformer
from torch import nn


def resize_grid_embedding(
    pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int], extra: int = 1
) -> torch.Tensor:
    """Position embeddings [extra + gh*gw, C] of a `grid` (gh, gw) resampled to `new_grid`.

    The first `extra` rows (class token) are kept; the grid part is interpolated bicubically.
    Returns [extra + nh*nw, C] in the dtype of `pos`.
    """
    if tuple(grid) == tuple(new_grid):
        return pos
    head, body = pos[:extra], pos[extra:]
    gh, gw = grid
    img = body.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=tuple(new_grid), mode="bicubic", align_corners=False)
    body = img.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([head, body], dim=0)


class AnyResolutionViT(VisionTransformer):
    """open_clip's VisionTransformer whose position embeddings follow the input's patch grid."""

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> tokens [B, 1 + gh*gw, width] (class token first), as open_clip's."""
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        if grid == tuple(self.grid_size):
            return super()._embeds(x)
        x = self.conv1(x)  # [B, width, gh, gw]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_grid_embedding(self.positional_embedding, tuple(self.grid_size), grid)
        x = x + pos.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)


class AnyResolutionAttentionPool(AttentionPool2d):
    """open_clip's AttentionPool2d (ModifiedResNet) whose position embeddings follow the map size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, h, w] feature map -> [B, output_dim]."""
        # int(): under ONNX tracing shapes are traced values; the grid is a constant of the weights
        side = math.isqrt(int(self.positional_embedding.shape[0]) - 1)
        if tuple(x.shape[-2:]) == (side, side):
            return super().forward(x)
        pos = resize_grid_embedding(self.positional_embedding, (side, side), tuple(x.shape[-2:]))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)  # (hw)BC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + pos[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return x[0]


_SWAPS = {VisionTransformer: AnyResolutionViT, AttentionPool2d: AnyResolutionAttentionPool}


def enable_any_resolution(model: nn.Module) -> int:
    """Let every open_clip grid-embedding module of `model` take any input size (in place).

    Only modules of exactly the open_clip classes are switched (to subclasses that add no
    parameters), so state dicts, peft wrapping and saving are unchanged. Returns how many.
    """
    n = 0
    for module in model.modules():
        new = _SWAPS.get(type(module))
        if new is not None:
            module.__class__ = new
            n += 1
    return n
