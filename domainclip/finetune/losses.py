"""Contrastive losses for paired image-text data.

Plain CLIP InfoNCE treats every other pair in the batch as a negative. In domain data many
images share one text (a class description, one patient's note), and then InfoNCE pushes an
image away from its own caption's copy. The multi-positive loss below instead spreads the
target over every pair whose text (or, label-aware, whose label set) is identical, UniCL style:

    targets_i2t[i, j] = P[i, j] / sum_j P[i, j]          P: [B, B] positive mask (diagonal = 1)
    loss = (CE(logits, targets_i2t) + CE(logits.T, targets_t2i)) / 2

With P = identity this is exactly symmetric InfoNCE. The minimum is not 0 when rows have k > 1
positives (it is log k: spreading mass evenly over identical texts is the optimum).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

POSITIVE_MODES = ("text", "label", "pair")


def positive_mask(
    texts: Sequence[str],
    labels: Sequence[Sequence[str]] | None = None,
    mode: str = "text",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which pairs count as positives. Returns BoolTensor[B, B] with a true diagonal.

    Args:
        texts: the B texts of the batch.
        labels: per pair its labels (needed for mode "label"; rows without labels only match by text).
        mode: "pair" (identity: plain InfoNCE), "text" (identical texts), "label" (identical
            texts or identical non-empty label sets).
    """
    if mode not in POSITIVE_MODES:
        raise ValueError(f"mode must be one of {POSITIVE_MODES}, got {mode!r}")
    n = len(texts)
    if mode == "pair":
        return torch.eye(n, dtype=torch.bool, device=device)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    t = torch.tensor([ids[x] for x in texts], device=device)
    mask = t[:, None] == t[None, :]
    if mode == "label":
        if labels is None or len(labels) != n:
            raise ValueError("mode 'label' needs one label list per text")
        keys = [tuple(sorted(set(lab))) for lab in labels]
        lid = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        lab = torch.tensor([lid[k] if k else -1 - i for i, k in enumerate(keys)], device=device)
        mask |= lab[:, None] == lab[None, :]
    return mask


def multi_positive_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
) -> torch.Tensor:
    """Symmetric contrastive loss with several positives per row.

    Args:
        image_feats: [B, D] L2-normalised image features.
        text_feats: [B, D] L2-normalised text features (row i pairs with image i).
        logit_scale: scalar, the multiplier exp(log_scale) (already exponentiated and clamped).
        positives: BoolTensor[B, B] from `positive_mask`.

    Returns:
        Scalar loss (mean of the image->text and text->image cross-entropies with soft targets).
    """
    return soft_target_loss(logit_scale * image_feats @ text_feats.T, positives)


def soft_target_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The loss of `multi_positive_loss` from image-text logits [B, B] (row i: image i; e.g.
    aggregated tile logits, `domainclip.finetune.tiles`) and the positive mask [B, B]."""
    p = positives.to(logits.dtype)
    i2t = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    pt = p.T
    t2i = -(pt / pt.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def supervised_loss(
    image_feats: torch.Tensor,
    class_feats: torch.Tensor,
    logit_scale: torch.Tensor,
    label_index: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of image features against class-prompt embeddings.

    Args:
        image_feats: [B, D] L2-normalised.
        class_feats: [C, D] L2-normalised class weight vectors (mean prompt embedding per class).
        logit_scale: scalar multiplier.
        label_index: LongTensor[B], class index per image, -1 = no usable label (ignored).

    Returns:
        Scalar loss (0 when no row has a label).
    """
    keep = label_index >= 0
    if not bool(keep.any()):
        return image_feats.sum() * 0.0
    logits = logit_scale * image_feats[keep] @ class_feats.T
    return F.cross_entropy(logits, label_index[keep])


def anchor_loss(current: Sequence[torch.Tensor], initial: Sequence[torch.Tensor]) -> torch.Tensor:
    """ProLIP-style pull toward initial weights: sum_k ||W_k - W0_k||_F^2 (scalar).

    Args:
        current: the trained tensors (e.g. the projections), any shapes.
        initial: their values before training (same shapes; no gradient).

    The gradient w.r.t. W_k is 2 (W_k - W0_k): a descent step moves each tensor back toward its
    start, in proportion to how far it has moved.
    """
    if len(current) != len(initial):
        raise ValueError(f"{len(current)} tensors but {len(initial)} initial values")
    if not current:
        return torch.zeros(())
    return sum((c - i.to(c)).square().sum() for c, i in zip(current, initial, strict=True))
