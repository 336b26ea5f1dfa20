"""Image saliency for an image-text score: Integrated Gradients, GradCAM, Occlusion, attention maps.

Every method explains column `target` of `PromptScorer(pixels) -> [B, P]` and returns a map at
the model's input resolution [H, W] (float32; positive = evidence for the prompt).

    ex = ImageExplainer(bb)                      # resolves layers once; reuse it per backbone
    sal = ex.explain(pixels, "a scratch on steel", method="gradcam")
    sal.map  # np.ndarray [H, W]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from domainclip.explain.attention import attention_relevance
from domainclip.explain.errors import ExplainError, MethodNotApplicableError
from domainclip.explain.forward import PromptScorer, eval_mode
from domainclip.explain.layers import (
    ConvLayer,
    image_tower,
    last_conv_layer,
    patch_size,
    token_grid,
    tokens_batch_first,
    transformer_blocks,
)
from domainclip.models import Backbone

METHODS = ("gradcam", "ig", "occlusion", "rollout", "chefer")
VIT_ONLY = ("rollout", "chefer")
BASELINES = ("black", "blur", "mean")
SIGNED = ("ig", "occlusion")  # the others are non-negative (ReLU'd CAM, attention relevance)


@dataclass
class SaliencyMap:
    """One explanation.

    Attributes:
        map: [H, W] float32 at the model's input resolution.
        method: one of METHODS.
        prompt: the explained text.
        score: the scorer's output for the prompt on the unmodified image (logit or probability).
        seconds: wall time of the attribution.
        params: method settings actually used (steps, baseline, layer, window, ...).
    """

    map: np.ndarray
    method: str
    prompt: str
    score: float
    seconds: float
    params: dict = field(default_factory=dict)


@dataclass
class ContrastMap:
    """Saliency for prompt A minus saliency for prompt B (same image, method and settings)."""

    a: SaliencyMap
    b: SaliencyMap
    diff: np.ndarray


def is_signed(method: str) -> bool:
    """True for methods whose maps carry a sign (draw them with a diverging colour map)."""
    return method in SIGNED


def methods_for(bb: Backbone) -> tuple[str, ...]:
    """Methods that apply to this backbone's image tower."""
    return METHODS if bb.image_arch == "vit" else tuple(m for m in METHODS if m not in VIT_ONLY)


def make_baseline(pixels: torch.Tensor, kind: str, bb: Backbone) -> torch.Tensor:
    """Reference input [1, 3, H, W] in normalised space.

    black: pixel value 0; mean: the normalisation mean (0 after normalising); blur: a Gaussian
    blur of the image (sigma = H / 16), which removes detail but keeps colour and layout. Blurring
    the normalised tensor equals normalising the blurred image (the blur is linear, per channel).
    """
    if kind == "black":
        mean = torch.tensor(bb.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(bb.std, device=pixels.device).view(1, 3, 1, 1)
        return ((0.0 - mean) / std).expand_as(pixels).contiguous()
    if kind == "mean":
        return torch.zeros_like(pixels)
    if kind == "blur":
        sigma = max(pixels.shape[-1] / 16.0, 1.0)
        k = int(2 * round(3 * sigma) + 1)
        return gaussian_blur(pixels, [k, k], [sigma, sigma])
    raise ExplainError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[h, w] or [1, 1, h, w] -> [H, W] float32 numpy (bilinear)."""
    g = grid.detach().float().reshape(1, 1, *grid.shape[-2:])
    up = LayerAttribution.interpolate(g, size, interpolate_mode="bilinear")
    return up[0, 0].cpu().numpy().astype(np.float32)


class ImageExplainer:
    """Saliency methods for one backbone; finds its layers once and reuses them.

    Not thread-safe on a shared model: methods put temporary hooks on its layers, which other
    threads using the same model would run through. Serialise calls per model.

    Args:
        bb: any Backbone (default, open_clip, HF CLIP, fine-tuned/peft-wrapped).
    """

    def __init__(self, bb: Backbone) -> None:
        self.bb = bb
        self._conv: ConvLayer | None = None

    @property
    def tower(self) -> nn.Module:
        return image_tower(self.bb.model)[0][1]

    def conv_layer(self) -> ConvLayer:
        """The last conv stage of a CNN tower (probed once, then cached on this object)."""
        if self._conv is None:
            self._conv = last_conv_layer(self.bb.model, self.bb.image_size)
        return self._conv

    def scorer(
        self,
        prompts: Sequence[str],
        score: str = "similarity",
        temperature: float = 1.0,
    ) -> PromptScorer:
        return PromptScorer(self.bb, prompts, score=score, temperature=temperature)

    def explain(
        self,
        pixels: torch.Tensor,
        prompt: str,
        method: str = "gradcam",
        *,
        others: Sequence[str] = (),
        score: str = "similarity",
        temperature: float = 1.0,
        scorer: PromptScorer | None = None,
        **options: object,
    ) -> SaliencyMap:
        """Explain why `pixels` matches `prompt`.

        Args:
            pixels: [1, 3, H, W] or [3, H, W] normalised image (see `inputs.prepare_image`).
            prompt: the text to explain (target column 0 of the scorer).
            method: one of METHODS (`methods_for(bb)` lists those valid for this backbone).
            others: competing prompts for score="probability" (softmax over prompt + others).
            score / temperature: see `PromptScorer`.
            scorer: a prebuilt scorer whose column 0 is `prompt` (skips re-encoding the texts).
            options: method settings: ig -> steps, baseline, internal_batch_size;
                occlusion -> window, stride, baseline, perturbations_per_eval; gradcam -> relu.

        Returns:
            SaliencyMap with map [H, W].
        """
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method not in methods_for(self.bb):
            raise MethodNotApplicableError(
                f"{method} needs a ViT image tower, but {self.bb.spec} has a CNN image tower. "
                f"Use one of: {', '.join(methods_for(self.bb))}"
            )
        pixels = _as_batch(pixels).to(self.bb.device)
        if self.bb.image_arch == "cnn":
            # oneDNN convolutions run faster on NHWC inputs: 13-15% less CPU time per forward and
            # backward of the default tower, measured; the maps are identical.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if scorer is None:
            scorer = self.scorer([prompt, *others], score=score, temperature=temperature)
        elif scorer.prompts[0] != prompt:
            raise ExplainError("the given scorer's first prompt is not the prompt to explain")
        fn = _METHOD_FUNCS[method]
        with eval_mode(self.bb.model):
            with torch.no_grad():
                value = float(scorer(pixels)[0, 0])
            t0 = time.perf_counter()
            grid, params = fn(self, scorer, pixels, 0, dict(options))
            seconds = time.perf_counter() - t0
        smap = _upsample(grid, tuple(pixels.shape[-2:]))
        if not np.isfinite(smap).all():
            raise ExplainError(f"{method} produced non-finite values for prompt {prompt!r}")
        return SaliencyMap(smap, method, prompt, value, round(seconds, 4), params)

    def contrast(
        self,
        pixels: torch.Tensor,
        prompt_a: str,
        prompt_b: str,
        method: str = "gradcam",
        **kwargs: object,
    ) -> ContrastMap:
        """What changes when the framing changes: map(prompt_a) - map(prompt_b).

        With score="probability" both maps use the same softmax over A, B and `others`.
        """
        others = list(kwargs.pop("others", ()))
        a = self.explain(
            pixels, prompt_a, method, others=competitors(prompt_a, [prompt_b, *others]), **kwargs
        )
        b = self.explain(
            pixels, prompt_b, method, others=competitors(prompt_b, [prompt_a, *others]), **kwargs
        )
        return ContrastMap(a=a, b=b, diff=(a.map - b.map).astype(np.float32))


def competitors(prompt: str, pool: Sequence[str]) -> list[str]:
    """The other prompts of a softmax pool, without duplicates or `prompt` itself."""
    return [p for p in dict.fromkeys(pool) if p != prompt]


def explain_image(
    bb: Backbone, pixels: torch.Tensor, prompt: str, method: str = "gradcam", **kwargs: object
) -> SaliencyMap:
    """One-off `ImageExplainer(bb).explain(...)` (build an ImageExplainer to reuse layers)."""
    return ImageExplainer(bb).explain(pixels, prompt, method, **kwargs)


def _as_batch(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.dim() != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        raise ExplainError(f"expected one image [1, 3, H, W], got shape {tuple(pixels.shape)}")
    return pixels


def _pop(options: dict, key: str, default: object) -> object:
    value = options.pop(key, None)  # None means "use the default" (CLI flags left unset)
    return default if value is None else value


def _no_extra(method: str, options: dict) -> None:
    if options:
        raise ExplainError(f"{method} does not take option(s) {', '.join(sorted(options))}")


def _ig(
    ex: ImageExplainer, scorer: PromptScorer, pixels: torch.Tensor, target: int, options: dict
) -> tuple[torch.Tensor, dict]:
    steps = int(_pop(options, "steps", 32))
    baseline = str(_pop(options, "baseline", "black"))
    ibs = int(_pop(options, "internal_batch_size", 16))
    _no_extra("ig", options)
    if steps < 2:
        raise ExplainError(f"ig needs at least 2 steps, got {steps}")
    ig = IntegratedGradients(scorer)
    attr, delta = ig.attribute(
        pixels,
        baselines=make_baseline(pixels, baseline, ex.bb),
        target=target,
        n_steps=steps,
        internal_batch_size=ibs,
        return_convergence_delta=True,
    )
    params = {"steps": steps, "baseline": baseline, "internal_batch_size": ibs}
    params["convergence_delta"] = float(delta.abs().max())
    return attr.sum(dim=1)[0], params  # signed channel sum: positive = raises the score


def _gradcam(
    ex: ImageExplainer, scorer: PromptScorer, pixels: torch.Tensor, target: int, options: dict
) -> tuple[torch.Tensor, dict]:
    relu = bool(_pop(options, "relu", True))
    _no_extra("gradcam", options)
    if ex.bb.image_arch == "vit":
        tower = ex.tower
        blocks = transformer_blocks(tower)
        p = patch_size(tower)
        grid_hw = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        with token_grid(blocks[-1], grid_hw, tokens_batch_first(tower)) as grid:
            attr = LayerGradCam(scorer, grid).attribute(
                pixels, target=target, relu_attributions=relu
            )
        where = f"input tokens of the last block ({type(blocks[-1]).__name__}) as a {grid_hw} grid"
    else:
        layer = ex.conv_layer()
        attr = LayerGradCam(scorer, layer.module).attribute(
            pixels, target=target, relu_attributions=relu
        )
        where = f"{layer.name} {list(layer.shape[1:])}"
    params = {"layer": where, "relu": relu}
    if relu and float(attr.detach().max()) <= 0:
        # Happens on untrained or badly matched pairs: every location lowers the score.
        params["note"] = "all-negative CAM (every location lowers the score); use relu=False"
    return attr[0, 0], params


def _occlusion(
    ex: ImageExplainer, scorer: PromptScorer, pixels: torch.Tensor, target: int, options: dict
) -> tuple[torch.Tensor, dict]:
    size = pixels.shape[-1]
    window = int(_pop(options, "window", max(2, size // 8)))
    stride = int(_pop(options, "stride", max(1, window // 2)))
    baseline = str(_pop(options, "baseline", "mean"))
    per_eval = int(_pop(options, "perturbations_per_eval", 16))
    _no_extra("occlusion", options)
    if not 1 <= stride <= window <= size:
        raise ExplainError(f"occlusion needs 1 <= stride <= window <= {size}")
    attr = Occlusion(scorer).attribute(
        pixels,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=make_baseline(pixels, baseline, ex.bb),
        target=target,
        perturbations_per_eval=per_eval,
    )
    params = {"window": window, "stride": stride, "baseline": baseline}
    return attr.mean(dim=1)[0], params  # score drop when the patch is hidden


def _rollout(
    ex: ImageExplainer, scorer: PromptScorer, pixels: torch.Tensor, target: int, options: dict
) -> tuple[torch.Tensor, dict]:
    _no_extra("rollout", options)
    grid = attention_relevance(scorer, ex.tower, pixels, target, weighted=False)
    return grid, {"note": "attention rollout ignores the text"}


def _chefer(
    ex: ImageExplainer, scorer: PromptScorer, pixels: torch.Tensor, target: int, options: dict
) -> tuple[torch.Tensor, dict]:
    _no_extra("chefer", options)
    return attention_relevance(scorer, ex.tower, pixels, target, weighted=True), {}


_METHOD_FUNCS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    "gradcam": _gradcam,
    "ig": _ig,
    "occlusion": _occlusion,
    "rollout": _rollout,
    "chefer": _chefer,
}
