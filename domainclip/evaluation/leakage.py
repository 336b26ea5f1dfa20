"""Label leakage in an evaluation: retrieval repeated with the label words masked in the texts.

When the evaluated rows' texts name their own label (`datasets.textquality`: "CT ...", "a
scratch on ..."), image-text retrieval can succeed by matching the label word instead of the
image content. This check repeats retrieval with those words replaced by ``[MASK]`` and reports
both, plus a retrieval-based classification: the label of the top-1 retrieved text compared
with the image's label (R@1 counts only the exact text; this counts any text of the same label).

Zero-shot classification itself scores images against the prompt set, whose texts name the
classes by construction, so masking changes nothing there; it is not repeated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from domainclip.datasets.textquality import label_synonyms, mask_label_words, text_quality
from domainclip.evaluation.bootstrap import bootstrap_metrics
from domainclip.evaluation.embed import EmbeddedSplit
from domainclip.models import Backbone
from domainclip.scoring.prompts import PromptSet
from domainclip.scoring.zeroshot import embed_unique_texts


def _label_accuracy(emb: EmbeddedSplit, feats: torch.Tensor) -> np.ndarray:
    """[M] 1.0 where the top-1 retrieved row text belongs to a row with the image's labels."""
    sims = emb.image_feats @ feats.T  # [M, M] image i vs the text of row j
    top = sims.argmax(dim=1).numpy()
    labels = [tuple(sorted(r.label)) for r in emb.rows]
    return np.array([labels[j] == labels[i] for i, j in enumerate(top)], dtype=np.float64)


def leakage_check(
    bb: Backbone,
    emb: EmbeddedSplit,
    ps: PromptSet,
    retrieval: Any,
    n_boot: int,
    seed: int,
    text_feats: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any] | None:
    """Retrieval with and without label words in the texts (None when no class leaks).

    Args:
        emb: the evaluated split (rows, image features [M, D]).
        retrieval: `evaluate._retrieval(emb, text_feats, n_boot, seed)` (run on the masked texts).
        text_feats: text -> [D] features already computed (the rows' own texts); only the masked
            texts are embedded.
    Returns:
        {"leaking_classes": {class: fraction}, "words": {class: [...]}, "n_masked_rows",
         "retrieval": masked R@k dict, "label_accuracy": {"texts": Estimate, "masked": Estimate},
         "note"}.
    """
    names = {c: list(cp.names) for c, cp in ps.classes.items()}
    q = text_quality(emb.rows, names)
    if not q.leaking_classes or len(emb.rows) < 2:
        return None
    phrases = label_synonyms(sorted({lab for r in emb.rows for lab in r.label}), names)
    every = sorted({p for ps_ in phrases.values() for p in ps_}, key=lambda p: (-len(p), p))
    masked_rows = [dataclasses.replace(r, text=mask_label_words(r.text, every)) for r in emb.rows]
    n_masked = sum(a.text != b.text for a, b in zip(masked_rows, emb.rows, strict=True))
    masked = dataclasses.replace(emb, rows=masked_rows)
    feats = dict(text_feats or {})
    feats.update(embed_unique_texts(bb, [r.text for r in emb.rows + masked_rows if r.text not in feats]))
    acc = {}
    for key, split in (("texts", emb), ("masked", masked)):
        hits = _label_accuracy(split, torch.stack([feats[r.text] for r in split.rows]))
        acc[key] = bootstrap_metrics(
            lambda idx, h=hits: {"label_accuracy": float(h[idx].mean())},
            np.zeros(len(hits), dtype=np.int64),
            n_boot,
            seed,
        )["label_accuracy"].to_dict()
    return {
        "leaking_classes": {c: q.leakage[c]["fraction"] for c in q.leaking_classes},
        "words": {c: q.leakage[c]["words"] for c in q.leaking_classes},
        "n_masked_rows": int(n_masked),
        "retrieval": retrieval(masked, feats, n_boot, seed),
        "label_accuracy": acc,
        "note": "label words (class names, plural/singular, the prompt set's synonyms) replaced "
        "by [MASK] in every evaluated row's text; label accuracy = the top-1 retrieved text "
        "belongs to a row with the image's labels. A large drop means retrieval read the label "
        "word, not the image. Classification scores images against the class prompts and is "
        "unaffected.",
    }
