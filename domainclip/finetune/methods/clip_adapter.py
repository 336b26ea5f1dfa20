"""CLIP-Adapter (Gao et al. 2021): a residual bottleneck MLP on the projected features.

    out = ratio * MLP(f) + (1 - ratio) * f,   MLP = Linear(D, D/r) -> ReLU -> Linear(D/r, D) -> ReLU

`ClipAdapterModel` folds the adapters into `encode_image` / `encode_text`, so a loaded run is
used through the unchanged Backbone interface. Every other attribute (visual, text, logit_scale,
...) is looked up on the wrapped model, so explainers that reach into the towers keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class ResidualAdapter(nn.Module):
    """Bottleneck MLP with a residual mix. Input/output: [B, D]."""

    def __init__(self, dim: int, reduction: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(inplace=True),
        )
        self.ratio = float(ratio)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(f) + (1.0 - self.ratio) * f

    @contextlib.contextmanager
    def scaled(self, alpha: float) -> Iterator[None]:
        """Weight-space interpolation (WiSE-FT) towards the base model: mixing ratio x alpha inside.

        alpha = 0 is the identity (the base model's features), 1 the trained adapter; the MLP's
        own weights have no base counterpart, so the ratio is what interpolates.
        """
        ratio = self.ratio
        self.ratio = ratio * alpha
        try:
            yield
        finally:
            self.ratio = ratio


class ClipAdapterModel(nn.Module):
    """A contrastive model with CLIP-Adapters after its image and/or text projection.

    Args:
        clip: the base model (encode_image / encode_text / logit_scale).
        image_adapter, text_adapter: `ResidualAdapter` or None.
    """

    BASE_PREFIX = "clip."  # state-dict prefix of the wrapped base model's tensors

    def __init__(
        self, clip: nn.Module, image_adapter: nn.Module | None, text_adapter: nn.Module | None
    ) -> None:
        super().__init__()
        self.clip = clip
        self.image_adapter = image_adapter
        self.text_adapter = text_adapter

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("clip"), name)

    def adapt_image(self, f: torch.Tensor) -> torch.Tensor:
        return f if self.image_adapter is None else self.image_adapter(f)

    def adapt_text(self, f: torch.Tensor) -> torch.Tensor:
        return f if self.text_adapter is None else self.text_adapter(f)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """image: [B, 3, H, W] -> [B, D]."""
        f = self.adapt_image(self.clip.encode_image(image))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """text: [B, L] token ids -> [B, D]."""
        f = self.adapt_text(self.clip.encode_text(text))
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.clip.logit_scale.exp()
