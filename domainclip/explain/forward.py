"""Captum `forward_func`s around a Backbone: image -> score per prompt, and text -> score for an image.

Captum's contract: `forward_func(inputs) -> Tensor[B, ...]`, and `target` picks the output column
to explain. `PromptScorer(pixels [B,3,H,W]) -> [B, P]` gives one column per prompt, so
`target=i` explains prompt i. Text features (for images) or image features (for texts) are
computed once, without gradients, when the scorer is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from domainclip.calibrators import Calibrator, TemperatureCalibrator
from domainclip.explain.errors import ExplainError
from domainclip.models import Backbone

SCORES = ("similarity", "probability")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Reject empty prompt lists and blank prompts (a blank text explains nothing)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ExplainError("no prompt given: pass the text to explain (e.g. --text '...')")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ExplainError(
                f"prompt {i + 1} is empty: give a non-empty text describing the image"
            )
    return prompts


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode (no dropout, frozen batch-norm statistics) and restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class PromptScorer(nn.Module):
    """forward_func for image attribution: pixels [B, 3, H, W] -> scores [B, P].

    Args:
        bb: the backbone (used through `encode_image`, `encode_texts` and `class_logits`).
        prompts: P texts; column i of the output belongs to prompts[i].
        score: "similarity" -> exp(logit_scale) * cosine(image, prompt), the image-text score
            itself (never a run's classifier head: a linear probe ignores the text, so its logits
            would not explain the prompt); "probability" -> softmax(bb.class_logits / T) over the P
            prompts, i.e. what a run classifies with (a head, if any, needs its class prompts in
            `head.classes` order). Needs P >= 2 (with one prompt the probability is constantly 1).
        temperature: T of temperature scaling (used when no `calibrator` is given).
        calibrator: the run's calibrator (`domainclip.runs.resolve_model(...).calibrator`); the
            probability score is softmax(calibrator(class_logits)). Overrides `temperature`.
    """

    def __init__(
        self,
        bb: Backbone,
        prompts: Sequence[str],
        score: str = "similarity",
        temperature: float = 1.0,
        calibrator: Calibrator | None = None,
    ) -> None:
        super().__init__()
        self.prompts = check_prompts(prompts)
        if score not in SCORES:
            raise ExplainError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        if score == "probability" and len(self.prompts) < 2:
            raise ExplainError(
                "score='probability' needs at least two prompts to compete in the softmax "
                "(add alternatives, e.g. --against '...'), or use score='similarity'"
            )
        if calibrator is None:
            if not temperature > 0:
                raise ExplainError(f"temperature must be > 0, got {temperature}")
            calibrator = TemperatureCalibrator(float(temperature))
        self.bb = bb
        self.score = score
        self.calibrator = calibrator
        with eval_mode(bb.model):
            self.register_buffer("text_feats", bb.encode_texts(self.prompts).to(bb.device))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, H, W] normalised -> [B, P] logits or probabilities."""
        img = nn.functional.normalize(self.bb.model.encode_image(pixels).float(), dim=-1)
        if self.score == "probability":
            logits = self.bb.class_logits(img, self.text_feats)
            return torch.softmax(self.calibrator.calibrate(logits), dim=-1)
        return self.bb.logit_scale_value() * img @ self.text_feats.T


class TextScorer(nn.Module):
    """forward_func for token attribution: token ids [B, L] -> [B] similarity to one fixed image.

    Args:
        bb: the backbone.
        pixels: [1, 3, H, W] the image the text is scored against (encoded once, no grad).
    """

    def __init__(self, bb: Backbone, pixels: torch.Tensor) -> None:
        super().__init__()
        self.bb = bb
        with eval_mode(bb.model):
            self.register_buffer("image_feats", bb.encode_images(pixels).to(bb.device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, L] token ids -> [B] similarity exp(logit_scale) * cosine(image, text)."""
        txt = nn.functional.normalize(self.bb.model.encode_text(ids).float(), dim=-1)
        return self.bb.logit_scale_value() * (txt @ self.image_feats[0])
