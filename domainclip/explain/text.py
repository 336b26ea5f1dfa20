"""Token attribution for a report against an image: LayerIntegratedGradients on token embeddings.

The path integral runs in embedding space from a reference text (every word piece replaced by the
padding token; start/end/class/separator tokens kept, so pooling positions are unchanged) to the
real text. The model is always called with the real token ids, so attention masks derived from
the ids are those of the real text. Scores of word pieces are summed into words.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import torch
from captum.attr import LayerIntegratedGradients

from domainclip.explain.errors import ExplainError
from domainclip.explain.forward import TextScorer, check_prompts, eval_mode
from domainclip.explain.layers import token_embedding
from domainclip.models import Backbone


@dataclass
class TokenAttribution:
    """Attribution of an image-text score to the words of the text.

    Attributes:
        text: the explained text.
        words: words as the tokenizer sees them (lower-cased by uncased tokenizers).
        scores: one score per word (sum over its pieces); positive = raises the similarity.
        tokens / token_scores: the underlying word pieces (special tokens dropped).
        score: similarity of the full text to the image.
        baseline_score: similarity of the reference (all-padding) text.
        convergence_delta: |sum(attributions) - (score - baseline_score)| (IG completeness).
        seconds: wall time.
    """

    text: str
    words: list[str]
    scores: list[float]
    tokens: list[str]
    token_scores: list[float]
    score: float
    baseline_score: float
    convergence_delta: float
    seconds: float

    def to_html(self) -> str:
        """The text as HTML spans, red for words that raise the score, blue for those that lower it.

        Every word is HTML-escaped, so a report containing markup is shown, never executed.
        """
        peak = max((abs(s) for s in self.scores), default=0.0) or 1.0
        spans = []
        for word, s in zip(self.words, self.scores, strict=True):
            alpha = min(abs(s) / peak, 1.0) * 0.8
            rgb = "220,38,38" if s >= 0 else "37,99,235"
            spans.append(
                f'<span style="background-color: rgba({rgb},{alpha:.2f}); padding: 1px 2px; '
                f'border-radius: 3px" title="{s:+.4f}">{html.escape(word, quote=True)}</span>'
            )
        caption = html.escape(
            f"similarity {self.score:.3f} (reference {self.baseline_score:.3f})", quote=True
        )
        return (
            f'<div class="domainclip-token-attribution">{" ".join(spans)}'
            f'<div style="font-size: 80%; color: #555">{caption}</div></div>'
        )


def _reference_score(
    scorer: TextScorer, layer: torch.nn.Module, ids: torch.Tensor, reference: torch.Tensor
) -> float:
    """Score at the start of the integration path: real ids, reference embeddings.

    Not `scorer(reference)`: towers that derive the attention mask from the ids (BERT, HF CLIP)
    would then mask the words out, while LayerIntegratedGradients keeps the real ids (and mask)
    and swaps only the embedding output.
    """
    ref_emb = layer(reference)
    handle = layer.register_forward_hook(lambda _m, _i, _o: ref_emb)
    try:
        return float(scorer(ids)[0])
    finally:
        handle.remove()


def token_attribution(
    bb: Backbone,
    pixels: torch.Tensor,
    text: str,
    steps: int = 32,
    internal_batch_size: int = 16,
) -> TokenAttribution:
    """Attribute the similarity of `text` to image `pixels` [1, 3, H, W] to its words.

    Not thread-safe on a shared model: while it runs, hooks on the text tower's embedding layer
    change what every other caller of that model computes. Serialise calls per model (the
    dashboard holds a lock per loaded model).

    Raises:
        ExplainError: empty text, or a text with no word tokens.
    """
    text = check_prompts([text])[0]
    if steps < 2:
        raise ExplainError(f"token attribution needs at least 2 integration steps, got {steps}")
    t0 = time.perf_counter()
    ids = bb.tokenizer([text]).to(bb.device)  # [1, L]
    special = bb.tokenizer.special_ids()
    is_word = torch.tensor([int(i) not in special for i in ids[0]], device=ids.device)
    if not bool(is_word.any()):
        raise ExplainError(f"the text {text!r} has no word tokens to attribute")
    reference = torch.where(is_word, torch.full_like(ids, bb.tokenizer.pad_id), ids)
    _, layer = token_embedding(bb.model)
    with eval_mode(bb.model):
        scorer = TextScorer(bb, pixels)
        with torch.no_grad():
            score = float(scorer(ids)[0])
            ref_score = _reference_score(scorer, layer, ids, reference)
        lig = LayerIntegratedGradients(scorer, layer)
        attr = lig.attribute(
            ids, baselines=reference, n_steps=steps, internal_batch_size=internal_batch_size
        )
    per_token = attr.sum(dim=-1)[0].detach().float().cpu()  # [L]
    delta = abs(float(per_token.sum()) - (score - ref_score))
    pieces = bb.tokenizer.tokens(ids[0])
    positions = [p for p, w in enumerate(is_word.tolist()) if w]
    words, word_scores = [], []
    for word, pos in bb.tokenizer.word_spans(ids[0].cpu()):
        words.append(word)
        word_scores.append(float(per_token[pos].sum()))
    return TokenAttribution(
        text=text,
        words=words,
        scores=word_scores,
        tokens=[pieces[p] for p in positions],
        token_scores=[float(per_token[p]) for p in positions],
        score=score,
        baseline_score=ref_score,
        convergence_delta=delta,
        seconds=round(time.perf_counter() - t0, 4),
    )
