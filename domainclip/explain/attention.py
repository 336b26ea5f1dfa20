"""Attention-based maps for ViT image towers.

- `rollout`: attention rollout (Abnar & Zuidema 2020). Head-averaged attention plus the residual
  identity, row-normalised, multiplied through the layers. It uses no gradients and therefore
  does NOT depend on the text: the text-sensitivity check flags it, which is the honest answer.
- `chefer`: gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, "Generic
  attention-model explainability"): per layer the head mean of (dScore/dA * A)^+ is accumulated
  as R <- R + A_bar @ R, starting from the identity. Text-dependent through the gradient.

Both read the row of the class token (or the mean over tokens for towers without one) over the
patch tokens, giving a [gh, gw] grid.
"""

from __future__ import annotations

import torch
from torch import nn

from domainclip.explain.errors import ExplainError
from domainclip.explain.layers import patch_size, record_attention, transformer_blocks


def _attention_grads(score: torch.Tensor, attns: list[torch.Tensor]) -> list[torch.Tensor]:
    """dScore/dA for each recorded attention tensor.

    nn.MultiheadAttention returns its per-head weights as a `.view` taken AFTER the weights were
    multiplied with the values, so autograd knows only the viewed tensor's base; differentiate
    with respect to the base and reshape.
    """
    sources = [
        a._base if a._base is not None and a._base.numel() == a.numel() else a for a in attns
    ]
    grads = torch.autograd.grad(score, sources)
    return [g.reshape(a.shape) for g, a in zip(grads, attns, strict=True)]


def attention_relevance(
    scorer: nn.Module,
    tower: nn.Module,
    pixels: torch.Tensor,
    target: int,
    weighted: bool,
) -> torch.Tensor:
    """Relevance of each patch for the class token.

    Args:
        scorer: forward_func, pixels [1, 3, H, W] -> [1, P].
        tower: the ViT image tower inside the scorer's model.
        pixels: [1, 3, H, W] normalised input.
        target: prompt column to explain (only used when `weighted`).
        weighted: False -> attention rollout; True -> gradient-weighted (Chefer-style).

    Returns:
        [gh, gw] float tensor (gh = H // patch, gw = W // patch).
    """
    blocks = transformer_blocks(tower)
    p = patch_size(tower)
    gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
    x = pixels.detach().clone().requires_grad_(weighted)
    with record_attention(blocks) as attns, torch.set_grad_enabled(weighted):
        score = scorer(x)[:, target].sum()
    if len(attns) != len(blocks):
        raise ExplainError(
            f"recorded {len(attns)} attention maps for {len(blocks)} blocks; the tower calls its "
            "attention in an unsupported way"
        )
    grads = _attention_grads(score, attns) if weighted else [None] * len(attns)
    n = attns[0].shape[-1]
    prefix = n - gh * gw
    if not 0 <= prefix <= 16:
        raise ExplainError(f"{n} tokens do not match a {gh}x{gw} patch grid")
    eye = torch.eye(n, device=attns[0].device)
    rel = eye.clone()
    for attn, grad in zip(attns, grads, strict=True):
        a = attn[0].detach().float()  # [heads, n, n]
        if weighted:
            a_bar = (grad[0].float() * a).clamp(min=0).mean(0)
            rel = rel + a_bar @ rel
        else:
            a_bar = 0.5 * a.mean(0) + 0.5 * eye  # the residual path carries half the signal
            a_bar = a_bar / a_bar.sum(-1, keepdim=True)
            rel = a_bar @ rel
    row = rel[0] if prefix > 0 else rel.mean(0)
    return row[prefix:].reshape(gh, gw)
