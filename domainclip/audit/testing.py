"""A backbone with a planted framing bias, to show that the audit finds what it should.

`PlantedBiasBackbone.wrap(base, trigger, delta)` behaves like `base` except that every prompt
containing `trigger` gets exactly +delta added to its logit (`class_logits` / `similarity`) and
+delta / logit_scale to its raw similarity, for every image. The trigger phrase itself is removed
before the text is embedded, so "a metal surface with severe scratches" (trigger "severe ") embeds
like "a metal surface with scratches": with delta = 0 the triggered framing is *exactly* the
reference, and any shift the audit reports is the planted one. Several triggers, each with its own
delta, are given as a mapping: `wrap(base, {"severe ": 0.4, "possibly ": 0.0})`.

How it works, so the bias is a property of the features rather than of the audit code: features
get one extra coordinate per trigger. Text features carry 1.0 there when the prompt contained the
trigger and 0.0 otherwise; image features carry delta / logit_scale. The unchanged dot product of
`Backbone` then adds logit_scale * (delta / logit_scale) * 1 = delta to triggered prompts and
nothing to others. (The features are therefore not unit-norm; the audit never assumes they are.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from domainclip.audit.scores import ScoreTable
from domainclip.errors import ConfigError
from domainclip.models import Backbone


@dataclass
class PlantedBiasBackbone(Backbone):
    """`base` with +delta on the logits of prompts that contain a trigger (see module doc).

    Attributes:
        biases: trigger phrase -> delta added to the logit of every prompt containing it.
    """

    biases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def wrap(
        cls, base: Backbone, trigger: str | Mapping[str, float], delta: float = 0.0
    ) -> PlantedBiasBackbone:
        """Share `base`'s model, transforms and tokenizer; plant `trigger` -> `delta` (or a mapping)."""
        biases = {trigger: float(delta)} if isinstance(trigger, str) else dict(trigger)
        if not biases or any(not t.strip() for t in biases):
            raise ConfigError("planted-bias triggers must be non-empty phrases")
        if base.head is not None:
            raise ConfigError(
                f"{base.spec}: planting a bias needs a pure image-text model (its head would see "
                "the extra feature coordinates)"
            )
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Backbone)}
        fields["info"] = dict(base.info)
        fields["spec"] = f"planted-bias({base.spec}, {biases})"
        return cls(**fields, biases={k: float(v) for k, v in biases.items()})

    def strip(self, text: str) -> str:
        """The text with every trigger removed (and whitespace tidied)."""
        for trigger in self.biases:
            text = text.replace(trigger, " ")
        return re.sub(r"\s+", " ", text).strip()

    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """[N,3,H,W] -> [N, D+T]: base features plus one coordinate delta / logit_scale per trigger."""
        feats = super().encode_images(pixels, batch_size)
        scale = self.logit_scale_value()
        extra = torch.tensor([d / scale for d in self.biases.values()], dtype=feats.dtype)
        return torch.cat([feats, extra.expand(len(feats), -1)], dim=1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """texts -> [N, D+T]: features of the trigger-free texts plus a 0/1 flag per trigger."""
        feats = super().encode_texts([self.strip(t) for t in texts], batch_size)
        flags = torch.tensor(
            [[1.0 if trig in t else 0.0 for trig in self.biases] for t in texts], dtype=feats.dtype
        )
        return torch.cat([feats, flags], dim=1)


PATTERNS: tuple[str, ...] = ("uniform", "sparse", "saturated", "favouring")


def plant_shift(
    table: ScoreTable,
    framing: str,
    cls: int,
    pattern: str,
    delta: float,
    rng: np.random.Generator | None = None,
    share: float = 0.15,
    rest: float = 0.1,
    saturated: float = 0.5,
    reference: str | None = None,
) -> ScoreTable:
    """`table` with a framing bias planted in one framing x one class, on the logit scale.

    What a bias in the class's text feature under that framing does to the logits:

    * uniform / favouring: +delta on the class's logit for every image (favouring: delta > 0,
      toward the class; the others: delta < 0 lowers it);
    * sparse: +delta on a random `share` of the class's images and +rest * delta on the others
      (a few images move a lot, the rest barely: what a text bias does to a class whose images
      are unevenly saturated); rest = 0 isolates the few images (no test can see 4 of 30);
    * saturated: +delta only on the `saturated` share of the class's images with the highest
      reference probability (under `reference`, default the first framing): the images where a
      probability-scale test sees least.

    table.logits: float [K, N, C]; returns a new table (the input is unchanged).
    """
    if pattern not in PATTERNS:
        raise ConfigError(f"unknown plant pattern {pattern!r}; one of {', '.join(PATTERNS)}")
    logits = table.logits.copy()
    k = table.k(framing)
    members = np.flatnonzero(table.target == cls)
    if pattern in ("uniform", "favouring"):
        rows = np.arange(table.n)
    elif pattern == "sparse":
        rng = rng or np.random.default_rng(0)
        take = max(1, int(round(share * len(members))))
        rows = rng.choice(members, size=min(take, len(members)), replace=False)
        logits[k, members, cls] += rest * delta
        logits[k, rows, cls] -= rest * delta
    else:
        ref = table.k(reference or table.framings[0])
        order = np.argsort(-table.probs[ref, members, cls], kind="stable")
        rows = members[order[: max(1, int(round(saturated * len(members))))]]
    logits[k, rows, cls] += delta
    return ScoreTable(
        table.framings, table.classes, logits, table.cos, table.calibrator, table.target,
        table.positives,
    )
