"""Zero-shot classifiers from prompt embeddings (prompt ensembling as in CLIP / CheXzero).

Single-label: one weight vector per class, the renormalised mean of its prompt embeddings; logits
are `bb.class_logits(image_feats, W)` (softmax over classes).
Multi-label: per class a positive and a negative weight vector; the class's binary logit is
`logit_pos - logit_neg`, i.e. the log-odds of a softmax over the {positive, negative} pair, so
`sigmoid(logit)` is P(class present) exactly as CheXzero computes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from domainclip.errors import ConfigError
from domainclip.models import Backbone


def embed_unique_texts(bb: Backbone, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Embed each distinct text once. Returns text -> [D] L2-normalised feature."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    feats = bb.encode_texts(unique)
    return dict(zip(unique, feats, strict=True))


def class_embeddings(
    bb: Backbone,
    class_texts: Mapping[str, Sequence[str]],
    cache: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Class weight vectors from prompts.

    Args:
        bb: the backbone whose text tower embeds the prompts.
        class_texts: class -> prompts (e.g. `PromptSet.class_texts(classes)`); order gives row order.
        cache: optional text -> [D] features already computed (texts in it are not re-embedded).

    Returns:
        Tensor[C, D]: per class the mean of its L2-normalised prompt embeddings, renormalised.
        Each distinct prompt is embedded once even when several classes share it.
    """
    empty = [c for c, t in class_texts.items() if not t]
    if empty:
        raise ConfigError(f"class(es) without any prompt text: {', '.join(empty)}")
    all_texts = [t for ts in class_texts.values() for t in ts]
    feats = dict(cache or {})
    feats.update(embed_unique_texts(bb, [t for t in all_texts if t not in feats]))
    rows = [torch.stack([feats[t] for t in ts]).mean(0) for ts in class_texts.values()]
    return F.normalize(torch.stack(rows), dim=-1)


def zero_shot_logits(bb: Backbone, image_feats: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Single-label logits: image_feats [N,D] x class weights W [C,D] -> [N,C] via `bb.class_logits`."""
    return bb.class_logits(image_feats, W)


def multilabel_logits(
    bb: Backbone, image_feats: torch.Tensor, W_pos: torch.Tensor, W_neg: torch.Tensor
) -> torch.Tensor:
    """Multi-label binary logits [N,C]: positive-prompt logit minus negative-prompt logit per class.

    `sigmoid` of the result equals the softmax probability of the positive prompt within each
    {positive, negative} pair. Goes through `bb.class_logits`, so a head that adds a text-independent
    term (e.g. a cache) cancels in the difference; heads that ignore the texts cannot express
    multi-label pairs and are refused.
    """
    if W_pos.shape != W_neg.shape:
        raise ValueError(
            f"W_pos {tuple(W_pos.shape)} and W_neg {tuple(W_neg.shape)} differ in shape"
        )
    pos = bb.class_logits(image_feats, W_pos)
    neg = bb.class_logits(image_feats, W_neg)
    if bb.head is not None and torch.equal(pos, neg):
        raise ConfigError(
            f"{bb.spec}: its classifier head ignores the prompt texts, so multi-label "
            "positive/negative prompt pairs cannot be scored through it"
        )
    return pos - neg
