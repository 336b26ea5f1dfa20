"""Image-text retrieval metrics in both directions, aware of duplicated texts.

Many images often share one text (a class description, one patient's note). Retrieval then asks
for *a* correct partner: an image query is correct when any copy of its text ranks high, and a text
query is correct when any image carrying that text ranks high. Texts are therefore deduplicated:
image->text ranks the distinct texts, text->image uses each distinct text once as a query.

Ranks are 1-based and pessimistic on ties: a wrong candidate with a score equal to the best correct
one is counted as ranked above it (untrained models produce many ties; they must not look good).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _groups_from_features(txt_feats: torch.Tensor) -> np.ndarray:
    """Group id per row (numbered in order of first occurrence): bit-identical rows are one text."""
    _, inverse = torch.unique(txt_feats, dim=0, return_inverse=True)
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(int(g), len(ids)) for g in inverse])


def _ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per query (row): 1 + number of wrong candidates scoring >= the best correct candidate.

    scores, correct: [Q, K] (float, bool); every row must have at least one correct candidate.
    """
    best = np.where(correct, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((scores >= best) & ~correct).sum(axis=1)


def retrieval_ranks(
    img_feats: torch.Tensor,
    txt_feats: torch.Tensor,
    text_groups: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the best correct partner for every query.

    Args:
        img_feats: [N, D] image features (row i pairs with text row i).
        txt_feats: [N, D] text features of each image's own text.
        text_groups: length-N keys; rows with equal keys have the same text (e.g. the text strings).
            None groups bit-identical feature rows.

    Returns:
        (i2t int [N]: per image, among the T distinct texts; t2i int [T]: per distinct text in order
        of first occurrence, among the N images).
    """
    if img_feats.ndim != 2 or img_feats.shape != txt_feats.shape:
        raise ValueError(
            f"img_feats {tuple(img_feats.shape)} and txt_feats {tuple(txt_feats.shape)} must both be [N, D]"
        )
    n = img_feats.shape[0]
    if n == 0:
        raise ValueError("retrieval needs at least one image-text pair")
    if text_groups is None:
        group = _groups_from_features(txt_feats.detach().cpu())
    else:
        if len(text_groups) != n:
            raise ValueError(f"text_groups has {len(text_groups)} entries for {n} pairs")
        ids: dict[Hashable, int] = {}
        group = np.array([ids.setdefault(g, len(ids)) for g in text_groups])
    n_texts = int(group.max()) + 1
    # One feature per distinct text (its first occurrence).
    first = np.array([np.flatnonzero(group == g)[0] for g in range(n_texts)])
    img = img_feats.detach().float().cpu().numpy()
    txt = txt_feats.detach().float().cpu().numpy()[first]
    sim = img @ txt.T  # [N, T]
    correct = group[:, None] == np.arange(n_texts)[None, :]  # [N, T]
    return _ranks(sim, correct), _ranks(sim.T, correct.T)


def summarize_ranks(
    ranks: np.ndarray, prefix: str, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """{prefix_R@k, prefix_median_rank, prefix_mean_rank} of 1-based ranks."""
    out = {f"{prefix}_R@{k}": float((ranks <= k).mean()) for k in ks}
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}_mean_rank"] = float(ranks.mean())
    return out


def retrieval_metrics(
    img_feats: torch.Tensor,
    txt_feats: torch.Tensor,
    text_groups: Sequence[Hashable] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@k and median rank for image->text and text->image retrieval.

    Args: as `retrieval_ranks`; ks: the k of Recall@k.

    Returns:
        {"i2t_R@k", "t2i_R@k" (fractions in [0, 1]), "i2t_median_rank", "t2i_median_rank",
        "i2t_mean_rank", "t2i_mean_rank", "n_images", "n_texts" (distinct texts)}. Cosine similarity
        ranks (a positive logit scale does not change them).
    """
    i2t, t2i = retrieval_ranks(img_feats, txt_feats, text_groups)
    out = {**summarize_ranks(i2t, "i2t", ks), **summarize_ranks(t2i, "t2i", ks)}
    out["n_images"] = float(len(i2t))
    out["n_texts"] = float(len(t2i))
    return out
