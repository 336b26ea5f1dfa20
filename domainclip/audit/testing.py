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

import torch

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
