"""Train only the top text layers: the frozen lower layers run once per distinct text, cached.

With `method.lora.text_layers: N` LoRA sits only on the top N layers of the text tower
(`methods.lora.apply_lora(top_layers=N)`), so the embeddings and the layers below them are
frozen and their output for a text never changes during a run. `FrozenTextCache` runs them once per
distinct text (training texts, validation texts, class prompts) and keeps each text's hidden
states `[L_i, H]` (real tokens only); a step then runs only the top N layers (`TextTop.encode`).
With `train.feature_cache_dir` the hidden states are kept on disk like the image features: one
safetensors file per set of texts, keyed by a hash of the lower layers' weights, the tokenizer
(its full definition and context length), the number of cached layers and the texts
(`text_cache_key`), so a change of any of them means a new file.

Length bucketing: the distinct texts of a batch are sorted by length and cut into chunks, each
padded only to its own longest text (`length_chunks`), so one long report does not make every
short text of the batch pay for its padding. Batch composition (the contrastive negatives) is
unchanged; only how the texts are grouped for the matrix products.

Exactness: the lower layers run in eval mode (no dropout) whether cached or not, and masked
padding keys get zero attention, so `encode(texts)` equals `model.encode_text(tokenizer(texts))`
in eval mode to float tolerance (tested). During training dropout acts in the top layers only
(before, it acted in every layer).

Supported text towers: open_clip `CustomTextCLIP` with a Hugging Face BERT-style encoder (the
default MiniLM; mean or last-hidden-state CLS pooling). Other towers (open_clip's causal text
transformer, HF CLIP) still get LoRA on the top N layers only, but run every layer each step.

Projection-only text training (`method.text_tower: locked`, ProLIP-style): the whole text tower is
frozen, so `PooledText` caches its pooled output `[1, Dpre]` per distinct text in the same cache
(`FrozenTextCache`, same disk format, keyed by the whole tower's weights minus the projection, the
tokenizer and the texts); a step then only applies the trainable projection (and CLIP-Adapter, if
any), so its cost does not depend on report length. Works for every text tower family
(`Adaptation.pooled_text`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domainclip.finetune.adaptation import Adaptation
from domainclip.finetune.config import FinetuneConfig
from domainclip.finetune.data import fingerprint_state
from domainclip.finetune.methods.lora import count_layers
from domainclip.finetune.towers import get_path
from domainclip.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

POOLERS = ("MeanPooler", "ClsLastHiddenStatePooler")  # pool from last_hidden_state + mask only
PAD_SLACK = 0.25  # a chunk may hold up to 25% padding tokens before a new chunk starts


@dataclass
class TextStack:
    """Where the layers of a BERT-style open_clip text tower are (see module docstring).

    text: open_clip `HFTextEncoder` (pooler, proj, config.pad_token_id); bert: its transformer
    (LoRA layers injected when wrapped); split: the number of lower (frozen, cached) layers.
    """

    text: nn.Module
    bert: nn.Module
    split: int

    @property
    def layers(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    @property
    def pad_id(self) -> int:
        return int(self.text.config.pad_token_id or 0)

    @property
    def tag(self) -> int:
        """What is cached (part of the cache key): the number of lower layers."""
        return self.split

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """The lower layers in eval mode (no dropout) within the block."""
        was = self.bert.training
        self.bert.train(False)
        try:
            yield
        finally:
            self.bert.train(was)

    def run(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """ids [B, L] -> per text its hidden states [L_i, H] after the lower layers (real tokens)."""
        h, mask = self.lower(ids)
        return [hi[:mi] for hi, mi in zip(h.float().cpu(), mask.sum(1).tolist(), strict=True)]

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """Weights that determine the cached hidden states: embeddings and the lower layers."""
        out = {f"embeddings.{k}": v for k, v in self.bert.embeddings.state_dict().items()}
        for i in range(self.split):
            out.update({f"layer.{i}.{k}": v for k, v in self.layers[i].state_dict().items()})
        return out

    def _mask(self, hidden: torch.Tensor, mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.bert.config, inputs_embeds=hidden, attention_mask=mask
        )

    @torch.no_grad()
    def lower(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] -> (hidden [B, L, H] after the lower layers, mask [B, L] 1 = real token)."""
        mask = (ids != self.pad_id).long()
        h = self.bert.embeddings(input_ids=ids)
        m = self._mask(h, mask)
        for layer in self.layers[: self.split]:
            h = layer(h, m)
        return h, mask

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, H], mask [B, L] -> pooled [B, H] (top layers + the tower's pooler)."""
        from transformers.modeling_outputs import BaseModelOutput

        m = self._mask(hidden, mask)
        for layer in self.layers[self.split :]:
            hidden = layer(hidden, m)
        return self.text.pooler(BaseModelOutput(last_hidden_state=hidden), mask)


def text_stack(adapt: Adaptation, top: int) -> TextStack | None:
    """The TextStack of `adapt`'s text tower with `top` trained layers, or None when the tower is
    not a BERT-style open_clip HF tower or `top` leaves no layer below to cache."""
    text = getattr(adapt.base, "text", None)
    if text is None or type(getattr(text, "pooler", None)).__name__ not in POOLERS:
        return None
    bert = get_path(adapt.base, adapt.layout.text_wrap)
    if hasattr(bert, "get_base_model"):  # peft wrapper: the model with LoRA layers injected
        bert = bert.get_base_model()
    if not (hasattr(bert, "embeddings") and hasattr(getattr(bert, "encoder", None), "layer")):
        return None
    n = count_layers(bert.encoder)
    if not 0 < top < n:
        return None
    return TextStack(text, bert, n - top)


@dataclass
class PooledText:
    """The whole text tower frozen (`method.text_tower: locked`): what is cached per text is the
    tower's pooled output before the projection, `[1, Dpre]` (any tower family)."""

    adapt: Adaptation

    tag = "pooled"  # part of the cache key

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """The locked tower in eval mode (no dropout) within the block."""
        was = self.adapt.model.training
        self.adapt.set_train(False)
        try:
            yield
        finally:
            self.adapt.set_train(was)

    @torch.no_grad()
    def run(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """ids [B, L] -> per text its pooled output [1, Dpre]."""
        return list(self.adapt.pooled_text(ids).float().cpu().unsqueeze(1))

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """Weights that determine the pooled output: the text tower without its projection."""
        a = self.adapt
        proj = set(a.layout.text_proj.param_names(a.base))
        return {
            k: v
            for k, v in a.base.state_dict().items()
            if not k.startswith(a.layout.image_prefixes) and k not in proj and k not in a.layout.shared
        }


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what turns a text into ids: the tokenizer's full definition and context length."""
    impl = tokenizer.impl
    backend = getattr(impl, "backend_tokenizer", None)
    if backend is not None:
        # The backend records the last call's padding/truncation: not part of the definition
        # (truncation is the context length, hashed below).
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        desc = json.dumps(spec, sort_keys=True)
    else:
        vocab = impl.get_vocab() if hasattr(impl, "get_vocab") else getattr(impl, "encoder", {})
        desc = json.dumps(sorted(vocab.items()))
    h = hashlib.sha256(f"{tokenizer.kind}|{tokenizer.context_length}|{type(impl).__name__}|".encode())
    h.update(desc.encode())
    return h.hexdigest()[:16]


def choose_text_tower(texts: Iterable[str], tokenizer, threshold: int) -> tuple[str, str]:
    """`method.text_tower: auto` -> ("locked" | "lora", reason): locked when the distinct texts'
    median length in word pieces (capped at the context length) exceeds `threshold`. A top-N
    LoRA step costs in proportion to the tokens it sees; a locked tower's step does not."""
    uniq = sorted(set(texts))
    if not uniq:
        return "lora", "method.text_tower auto -> lora: no training texts to measure"
    cap = tokenizer.context_length
    median = statistics.median(min(tokenizer.count_tokens(t), cap) for t in uniq)
    what = f"the {len(uniq)} distinct training texts' median length is {median:g} word pieces"
    if median > threshold:
        return "locked", (
            f"method.text_tower auto -> locked: {what} (> {threshold}, long reports): only the text "
            "projection trains, over the tower's cached output, so a step's cost does not grow "
            "with report length"
        )
    return "lora", f"method.text_tower auto -> lora: {what} (<= {threshold}, short texts)"


def text_cache_key(weights_fp: str, tokenizer_fp: str, split: int | str, texts: Iterable[str]) -> str:
    """Key of one cached set of texts: frozen weights, tokenizer, what is cached (the number of
    lower layers, or "pooled" for a locked tower), the texts."""
    h = hashlib.sha256(f"text-hidden|{weights_fp}|{tokenizer_fp}|{split}".encode())
    for t in sorted(set(texts)):
        h.update(hashlib.sha256(t.encode()).digest())
    return "text-" + h.hexdigest()[:24]


def length_chunks(lengths: list[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Indices grouped into chunks of similar length (sorted ascending): a chunk grows while its
    padded size (count x longest) stays within (1 + slack) x its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) + 1) * n > (1 + slack) * (real + n):
            chunks.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        chunks.append(cur)
    return chunks


class FrozenTextCache:
    """What the frozen part of the text tower computes, per distinct text (CPU, float32): hidden
    states [L_i, H] after the lower layers (`TextStack`) or the pooled output [1, Dpre] of a locked
    tower (`PooledText`).

    Args:
        stack: the TextStack or PooledText; tokenizer: the backbone's TextTokenizer; device: where
        the frozen part runs; cache_dir: folder for files ("" = memory only).
    """

    def __init__(
        self, stack: TextStack | PooledText, tokenizer, device: torch.device, cache_dir: str = ""
    ) -> None:
        self.stack, self.tokenizer, self.device, self.cache_dir = stack, tokenizer, device, cache_dir
        self.store: dict[str, torch.Tensor] = {}
        self.info: dict = {"layers_cached": stack.tag, "texts": 0, "seconds": 0.0, "reused": False}

    def _compute(self, texts: list[str], batch_size: int = 64) -> None:
        """Run the frozen part over `texts` (sorted by length, so batches pad little)."""
        order = sorted(texts, key=len)
        with torch.no_grad(), self.stack.eval_mode():
            for i in range(0, len(order), batch_size):
                chunk = order[i : i + batch_size]
                outs = self.stack.run(self.tokenizer(chunk).to(self.device))
                for t, out in zip(chunk, outs, strict=True):
                    self.store[t] = out.clone()

    def prepare(self, texts: Iterable[str]) -> None:
        """Make sure every text is cached: from the disk file of this set when it exists, else
        computed (and written when cache_dir is set)."""
        t0 = time.perf_counter()
        uniq = sorted(set(texts) - set(self.store))
        if not uniq:
            return
        path = self._path(uniq)
        if path is not None and self._load(path, uniq):
            self.info["reused"] = True
        else:
            self._compute(uniq)
            if path is not None:
                self._save(path, uniq)
        self.info["texts"] = len(self.store)
        self.info["seconds"] += time.perf_counter() - t0

    def _path(self, uniq: list[str]) -> Path | None:
        if not self.cache_dir:
            return None
        weights = fingerprint_state(self.stack.frozen_state())
        key = text_cache_key(weights, tokenizer_fingerprint(self.tokenizer), self.stack.tag, uniq)
        return Path(self.cache_dir).expanduser() / f"{key}.safetensors"

    def _load(self, path: Path, uniq: list[str]) -> bool:
        from safetensors.torch import load_file

        if not path.is_file():
            return False
        try:
            data = load_file(str(path))
            lengths = data["lengths"].tolist()
            if len(lengths) != len(uniq):
                raise ValueError(f"{len(lengths)} texts stored, {len(uniq)} expected")
            for t, piece in zip(uniq, torch.split(data["hidden"], lengths), strict=True):
                self.store[t] = piece
            log.info("reusing cached text states %s", path)
            return True
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            log.warning("ignoring unreadable text cache %s (%s); recomputing", path, exc)
            return False

    def _save(self, path: Path, uniq: list[str]) -> None:
        from safetensors.torch import save

        hidden = torch.cat([self.store[t] for t in uniq]).contiguous()
        lengths = torch.tensor([len(self.store[t]) for t in uniq], dtype=torch.long)
        try:
            atomic_write_json(path.with_suffix(".json"), {"n": len(uniq), "layers": self.stack.tag})
            atomic_write_bytes(path, save({"hidden": hidden, "lengths": lengths}))
        except OSError as exc:  # a full or read-only cache disk must not stop training
            log.warning("could not write the text cache %s: %s", path, exc)

    def ensure(self, texts: list[str]) -> None:
        """Compute (in memory only) the texts not cached yet, e.g. prompts met during training."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.store]
        if missing:
            self._compute(missing)

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded hidden [u, Lmax, H] and mask [u, Lmax] of cached texts (Lmax 1 when pooled)."""
        parts = [self.store[t] for t in texts]
        longest = max(len(p) for p in parts)
        hidden = parts[0].new_zeros(len(parts), longest, parts[0].shape[-1])
        mask = torch.zeros(len(parts), longest, dtype=torch.long)
        for i, p in enumerate(parts):
            hidden[i, : len(p)] = p
            mask[i, : len(p)] = 1
        return hidden, mask


class TextTop:
    """Text features from the cache + what trains above it (see module docstring): the top layers
    over cached lower ones (`TextStack`), or only the projection over a locked tower's cached
    pooled output (`PooledText`)."""

    def __init__(self, adapt: Adaptation, cache: FrozenTextCache, slack: float = PAD_SLACK) -> None:
        self.adapt, self.cache, self.slack = adapt, cache, slack  # slack inf: one padded chunk

    def encode(self, texts: list[str]) -> torch.Tensor:
        """texts -> [n, D] unnormalised features (top layers, pooler, projection; with grad when
        enabled), length-bucketed so each chunk pads only to its own longest text."""
        stack, device = self.cache.stack, self.cache.device
        self.cache.ensure(texts)
        if isinstance(stack, PooledText):  # nothing per token trains: [n, Dpre] -> projection
            pooled = torch.cat([self.cache.store[t] for t in texts]).to(device)
            return self.adapt.text_from_pooled(pooled)
        lengths = [len(self.cache.store[t]) for t in texts]
        outs, order = [], []
        for chunk in length_chunks(lengths, self.slack):
            hidden, mask = self.cache.batch([texts[i] for i in chunk])
            outs.append(stack.top(hidden.to(device), mask.to(device)))
            order += chunk
        pooled = torch.cat(outs)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return self.adapt.text_from_pooled(pooled[inverse.to(pooled.device)])


def build_text_top(
    cfg: FinetuneConfig, adapt: Adaptation, device: torch.device, texts: Iterable[str]
) -> TextTop | None:
    """The TextTop of a run (the frozen part of `texts` cached), or None when it does not apply:
    `train.cache_features: never`, a fully trained text tower, or LoRA with
    `method.lora.text_layers` 0 (every layer) or on a tower that is not BERT-style.

    `method.text_tower: locked` (any method the step loop trains): the pooled output is cached and
    only the projection trains (`PooledText`)."""
    m = cfg.method
    if cfg.train.cache_features == "never":
        return None
    if m.text_tower == "locked":
        stack: TextStack | PooledText | None = PooledText(adapt)
    elif m.text_tower == "lora" and m.lora is not None:
        stack = text_stack(adapt, m.lora.text_layers)
    else:
        stack = None
    if stack is None:
        return None
    cache = FrozenTextCache(stack, adapt.bb.tokenizer, device, cfg.train.feature_cache_dir)
    cache.prepare(texts)
    if isinstance(stack, PooledText):
        what, trained = "the locked tower's pooled output", "only the text projection trains"
    else:
        what = f"{stack.split} lower layers"
        trained = f"{len(stack.layers) - stack.split} layers trained"
    log.info(
        "text tower: %s cached for %d distinct texts (%.1f s%s); %s",
        what, cache.info["texts"], cache.info["seconds"],
        ", from disk" if cache.info["reused"] else "", trained,
    )
    return TextTop(adapt, cache)
