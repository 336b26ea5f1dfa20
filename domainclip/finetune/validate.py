"""Per-epoch validation of a training run: loss, zero-shot accuracy, retrieval.

Uses the scoring helpers (prompt sets, class embeddings, duplicate-aware retrieval) that
`domainclip evaluate` uses too, so the numbers logged during training are computed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domainclip.finetune.adaptation import Adaptation
from domainclip.finetune.data import SplitData
from domainclip.finetune.health import feature_spread
from domainclip.finetune.losses import positive_mask, soft_target_loss
from domainclip.finetune.metric_names import accuracy_names
from domainclip.scoring.prompts import PromptSet
from domainclip.scoring.retrieval import retrieval_metrics
from domainclip.scoring.tiles import TiledFeatures
from domainclip.scoring.zeroshot import class_embeddings
from domainclip.templates import humanise

log = logging.getLogger(__name__)


@dataclass
class ValFeatures:
    """Normalised val image features [N, D] and the split rows they belong to (readable images).

    Tiled images (`fit: tile`): `image` holds the tiles [sum T, D], `counts` the tiles per row and
    `aggregate` the rule (`domainclip.scoring.tiles`); `pooled`/`tiles` give both views.
    """

    image: torch.Tensor
    rows: list[int]
    counts: list[int] | None = None
    aggregate: str = "lse"

    @property
    def tiles(self) -> TiledFeatures | None:
        return None if self.counts is None else TiledFeatures(self.image, self.counts, self.aggregate)

    @property
    def pooled(self) -> torch.Tensor:
        """[N, D]: one vector per row (the normalised mean tile feature for tiled rows)."""
        return self.image if self.tiles is None else self.tiles.pooled()

    def scores(self, score: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor | slice) -> torch.Tensor:
        """`score` ([n, D] -> [n, M]) of the rows at `index` (tiled: per tile, aggregated)."""
        tiles = self.tiles
        if tiles is None:
            return score(self.image[index])
        idx = torch.arange(len(self.rows))[index]
        return tiles.select(idx).scores(score)


def class_texts(prompts: PromptSet | None, classes: list[str]) -> dict[str, list[str]]:
    """Prompts per class; without a prompt set, the class name itself as words (`humanise`)."""
    if prompts is None:
        return {c: [humanise(c)] for c in classes}
    return prompts.class_texts(classes)


def encoder_for(adapt: Adaptation, device: torch.device) -> Callable[[list[str]], torch.Tensor]:
    """texts -> [n, D] unnormalised features with the adapted model (no grad, on the CPU)."""

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        ids = adapt.bb.tokenizer(texts).to(device)
        return adapt.model.encode_text(ids).float().cpu()

    return encode


@torch.no_grad()
def encode_texts_unique(
    encode: Callable[[list[str]], torch.Tensor], texts: list[str], batch: int = 256
) -> torch.Tensor:
    """Encode each distinct text once (normalised [N, D] in the order of `texts`)."""
    uniq = list(dict.fromkeys(texts))
    feats = torch.cat([encode(uniq[i : i + batch]) for i in range(0, len(uniq), batch)])
    where = {t: i for i, t in enumerate(uniq)}
    return F.normalize(feats.float(), dim=-1)[[where[t] for t in texts]]


@torch.no_grad()
def validation_metrics(
    adapt: Adaptation,
    split: SplitData,
    image: ValFeatures,
    encode_texts: Callable[[list[str]], torch.Tensor],
    prompts: PromptSet | None,
    positives: str,
    batch_size: int,
    max_logit_scale: float,
) -> dict[str, float]:
    """Validation metrics for the current weights.

    Args:
        image: normalised image features of the val rows that could be read.
        encode_texts: list[str] -> [n, D] features with the current text tower (+ adapters).
        prompts: prompt set for zero-shot classification (None: class names).
        positives: the loss's positive mode; batch_size: chunk size of the val loss.

    Returns:
        {"loss", "image_spread", "text_spread" (`health.feature_spread`: collapse signs),
         "zero_shot_acc", "zero_shot_macro_f1" (single-label sets; labelled rows only;
         "head_acc", "head_macro_f1" for a classifier head),
         "i2t_R@1", "t2i_R@1", "t2i_R@5", ... (retrieval_metrics), "n"}.
    """
    rows = image.rows
    texts = [split.texts[r] for r in rows]
    txt = encode_texts_unique(encode_texts, texts)
    img = image.pooled
    scale = adapt.model.logit_scale.detach().float().exp().clamp(max=max_logit_scale).cpu()
    losses = []
    for i in range(0, len(rows), batch_size):
        sl = slice(i, i + batch_size)
        if len(texts[sl]) < 2:
            continue
        pos = positive_mask(texts[sl], [split.labels[r] for r in rows[sl]], positives)
        logits = image.scores(lambda f, t=txt[sl]: scale * f @ t.T, sl)  # tiled: aggregated
        losses.append(float(soft_target_loss(logits, pos)))
    out: dict[str, float] = {"n": float(len(rows))}
    out["loss"] = sum(losses) / len(losses) if losses else float("nan")
    # collapse signs (finetune.health): the spread of the images and of the distinct texts
    first = list({t: i for i, t in reversed(list(enumerate(texts)))}.values())
    out["image_spread"] = feature_spread(image.image)  # tiled: over the tiles the scores use
    out["text_spread"] = feature_spread(txt[first])
    out.update(retrieval_metrics(img, txt, text_groups=texts))
    out.update(zero_shot(adapt, split, image, encode_texts, prompts))
    return out


def zero_shot(
    adapt: Adaptation,
    split: SplitData,
    image: ValFeatures,
    encode_texts: Callable[[list[str]], torch.Tensor],
    prompts: PromptSet | None,
) -> dict[str, float]:
    """Accuracy and macro-F1 through `bb.class_logits`: `zero_shot_acc` / `zero_shot_macro_f1`,
    or `head_acc` / `head_macro_f1` when a classifier head scores (`metric_names`)."""
    from sklearn.metrics import f1_score

    if prompts is not None and prompts.multi_label:
        return {}  # multi-label sets are scored by `domainclip evaluate` (AUROC per finding)
    y = split.label_index[image.rows]
    keep = y >= 0
    if not bool(keep.any()):
        return {}
    ct = class_texts(prompts, split.classes)
    all_texts = [t for ts in ct.values() for t in ts]
    feats = encode_texts_unique(encode_texts, all_texts)
    cache = dict(zip(all_texts, feats, strict=True))
    W = class_embeddings(adapt.bb, ct, cache=cache)
    logits = image.scores(lambda f: adapt.bb.class_logits(f, W), keep)
    pred = logits.argmax(1)
    yk = y[keep]
    acc, f1 = accuracy_names(adapt.bb.head is not None)  # a head is not zero-shot
    return {
        acc: float((pred == yk).float().mean()),
        f1: float(f1_score(yk.numpy(), pred.numpy(), average="macro", zero_division=0)),
    }
