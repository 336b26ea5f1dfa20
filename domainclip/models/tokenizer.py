"""One tokenizer interface for every backbone family.

Why a wrapper: open_clip's tokenizers always pad to the full context length (77 for CLIP,
our 128 for the default). Text towers that mask padding (BERT-style MiniLM, HF CLIP) give
identical features when the trailing all-padding columns are dropped, and a step at the batch's
longest text is ~2x cheaper than at 77 (measured in STACK.md). Causal open_clip text towers use
a fixed-size attention mask, so for them we keep the full length (`trim=False`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from domainclip.errors import DataError


def _clean_whitespace(text: str) -> str:
    return " ".join(text.split())


class TextTokenizer:
    """Callable `list[str] -> LongTensor[B, L]` with the same behaviour for all backbones.

    Args:
        impl: a Hugging Face tokenizer (kind="hf") or an open_clip tokenizer (kind="open_clip").
        kind: "hf" or "open_clip".
        context_length: maximum number of tokens, special tokens included; longer texts are truncated.
        trim: drop trailing columns that are padding in every row (only for pad-masking towers).
    """

    def __init__(self, impl: Any, kind: str, context_length: int, trim: bool) -> None:
        if kind not in ("hf", "open_clip"):
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.impl = impl
        self.kind = kind
        self.context_length = int(context_length)
        self.trim = trim
        if kind == "hf":
            self.pad_id = int(impl.pad_token_id if impl.pad_token_id is not None else 0)
            # CLIP's BPE vocabularies mark word ends with '</w>'; WordPiece marks continuations.
            self._bpe = any(k.endswith("</w>") for k in impl.get_vocab())
        else:
            self.pad_id = 0  # open_clip's SimpleTokenizer pads with zeros
            self._bpe = True

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenise texts. Returns LongTensor[B, L] with L <= context_length."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [_clean_whitespace(t) for t in texts]
        if not texts:
            raise DataError("no texts to tokenise")
        if self.kind == "hf":
            ids = self.impl(
                texts,
                return_tensors="pt",
                padding="longest" if self.trim else "max_length",
                truncation=True,
                max_length=self.context_length,
            ).input_ids
        else:
            ids = self.impl(texts, context_length=self.context_length)
        if self.trim:
            ids = self._trim(ids)
        return ids.long()

    def _trim(self, ids: torch.Tensor) -> torch.Tensor:
        used = (ids != self.pad_id).any(dim=0).nonzero()
        last = int(used.max()) + 1 if used.numel() else 1
        return ids[:, :last]

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` before truncation, special tokens included."""
        text = _clean_whitespace(text)
        if self.kind == "hf":
            # verbose=False: we only count; transformers would warn about the model's max length.
            return len(self.impl(text, truncation=False, verbose=False).input_ids)
        # open_clip SimpleTokenizer: encode() gives the BPE ids without start/end tokens.
        return len(self.impl.encode(text)) + 2

    def tokens(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Raw token strings for one row of ids, one per position (padding included)."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.kind == "hf":
            return list(self.impl.convert_ids_to_tokens(ids))
        dec = self.impl.decoder
        return [dec.get(i, "<pad>") if i != self.pad_id else "<pad>" for i in ids]

    def special_ids(self) -> set[int]:
        """Ids of special tokens (start/end/cls/sep/pad) that are not words of the text."""
        if self.kind == "hf":
            return {int(i) for i in self.impl.all_special_ids}
        enc = self.impl.encoder
        return {self.pad_id, enc["<start_of_text>"], enc["<end_of_text>"]}

    def word_spans(self, ids: torch.Tensor | Sequence[int]) -> list[tuple[str, list[int]]]:
        """Merge word pieces into words: [(word, [positions in ids])], special tokens dropped.

        WordPiece marks continuations with a leading '##'; CLIP's BPE marks word ends with '</w>'.
        """
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        toks = self.tokens(ids)
        special = self.special_ids()
        words: list[tuple[str, list[int]]] = []
        open_word = False  # BPE: the previous piece did not end its word
        for pos, (i, tok) in enumerate(zip(ids, toks, strict=True)):
            if i in special:
                open_word = False
                continue
            if tok.startswith("##") and words:
                words[-1] = (words[-1][0] + tok[2:], words[-1][1] + [pos])
                continue
            ends = tok.endswith("</w>")
            piece = tok.removesuffix("</w>")
            if open_word and words:
                words[-1] = (words[-1][0] + piece, words[-1][1] + [pos])
            else:
                words.append((piece, [pos]))
            # WordPiece pieces end a word unless the next starts with '##'.
            open_word = self._bpe and not ends
        return words
