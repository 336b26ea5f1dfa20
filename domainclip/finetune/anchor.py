"""The projections' starting point, for `loss.anchor_weight` (ProLIP-style regularisation).

ProLIP trains only the projections of a CLIP model and keeps them close to their pretrained
values with a squared-distance penalty (`losses.anchor_loss`). The starting values must be the
weights before ANY training, also when a run resumes (its checkpoint holds trained projections),
so they are taken from the freshly loaded backbone before `adaptation.prepare` loads a checkpoint
(`ProjectionAnchor.of`). Names are those of the base model (projections sit outside the peft wrap
points, so they never change).
"""

from __future__ import annotations

import torch
from torch import nn

from domainclip.finetune.losses import anchor_loss
from domainclip.finetune.towers import layout_for
from domainclip.models import Backbone


class ProjectionAnchor:
    """Initial projection weights {name: tensor} and the penalty of the current ones."""

    def __init__(self, initial: dict[str, torch.Tensor]) -> None:
        self.initial = initial

    @classmethod
    def of(cls, bb: Backbone) -> ProjectionAnchor:
        """Snapshot of `bb`'s image and text projection weights (call before any training)."""
        layout = layout_for(bb)
        names = set(layout.image_proj.param_names(bb.model)) | set(
            layout.text_proj.param_names(bb.model)
        )
        params = dict(bb.model.named_parameters())
        return cls({n: params[n].detach().clone() for n in sorted(names)})

    def penalty(self, base: nn.Module) -> torch.Tensor:
        """sum ||W - W0||^2 over the projections of `base` (the adapted base model)."""
        params = dict(base.named_parameters())
        names = [n for n in self.initial if params[n].requires_grad]
        return anchor_loss([params[n] for n in names], [self.initial[n] for n in names])
