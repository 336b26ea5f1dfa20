"""Where each backbone family keeps its towers, projections and LoRA targets.

Fine-tuning needs three facts per family that the Backbone interface deliberately hides:

* the *wrap point* of each tower: the submodule that peft wraps for LoRA. It is chosen so that
  the projection stays outside it, which keeps projection parameter names stable and lets a
  frozen tower's output be cached *before* the (trainable) projection;
* the *projection*: a module or a bare parameter applied to the pooled tower output;
* the LoRA target preset (a regex relative to the wrap point).

`encode_image(x) == image_projection.apply(image_projection.pre(encode_image, x))` holds for
every family (tested), which is what makes the feature cache exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from domainclip.errors import ConfigError
from domainclip.models import Backbone


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Submodule at dotted `path` ('' = root); attribute access goes through peft wrappers."""
    obj = root
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent), name, value)


@dataclass(frozen=True)
class Projection:
    """A tower's projection into the shared space: module path, parameter path, or none.

    kind: "module" (an nn.Module applied to pooled features), "param" (pooled @ parameter), or
    "none" (the projection is fused into the tower, e.g. ModifiedResNet's attention pool).
    """

    kind: str
    path: str = ""

    def param_names(self, model: nn.Module) -> list[str]:
        """Names (in `model.named_parameters()`) of the projection's parameters."""
        if self.kind == "none":
            return []
        if self.kind == "param":
            return [self.path]
        return [f"{self.path}.{n}" for n, _ in get_path(model, self.path).named_parameters()]

    def apply(self, model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        """[B, Dpre] pooled tower output -> [B, D] projected features."""
        if self.kind == "none":
            return pooled
        if self.kind == "param":
            return pooled @ get_path_param(model, self.path)
        return get_path(model, self.path)(pooled)

    @contextlib.contextmanager
    def bypassed(self, model: nn.Module) -> Iterator[None]:
        """Within the block the tower returns its pooled output without the projection."""
        if self.kind == "none":
            yield
            return
        parent_path, _, name = self.path.rpartition(".")
        parent = get_path(model, parent_path)
        if self.kind == "param":
            saved = parent._parameters[name]
            parent._parameters[name] = None  # open_clip skips `@ proj` when it is None
            try:
                yield
            finally:
                parent._parameters[name] = saved
        else:
            saved_mod = parent._modules[name]
            parent._modules[name] = nn.Identity()
            try:
                yield
            finally:
                parent._modules[name] = saved_mod


def get_path_param(model: nn.Module, path: str) -> torch.Tensor:
    parent, _, name = path.rpartition(".")
    return getattr(get_path(model, parent), name)


@dataclass(frozen=True)
class TowerLayout:
    """Family-specific layout of a model (see module docstring)."""

    image_wrap: str
    text_wrap: str
    image_proj: Projection
    text_proj: Projection
    image_prefixes: tuple[str, ...]  # parameter-name prefixes that belong to the image tower
    image_lora_preset: str
    text_lora_preset: str
    shared: tuple[str, ...] = ("logit_scale", "logit_bias")  # neither tower


# Regexes are matched by peft (re.fullmatch) against names relative to the wrap point.
OPEN_CLIP_BLOCKS = r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)"  # MHA in-proj + out-proj, MLP
BERT_LAYERS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)"
HF_CLIP_ATTN = r".*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"
EFFICIENTNET_POINTWISE = r".*blocks\.\d+\.\d+\.(conv_pw|conv_pwl)"  # 1x1 convs, not depthwise
TIMM_VIT = r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
RESNET_POINTWISE = r".*layer\d\.\d+\.(conv1|conv3)"  # open_clip ModifiedResNet 1x1 convs


def _image_side(model: nn.Module) -> tuple[str, Projection, str]:
    import open_clip

    visual = model.visual
    if isinstance(visual, open_clip.timm_model.TimmModel):
        trunk_name = type(getattr(visual, "trunk", visual)).__name__.lower()
        preset = (
            TIMM_VIT if "vision" in trunk_name or "vit" in trunk_name else EFFICIENTNET_POINTWISE
        )
        return "visual.trunk", Projection("module", "visual.head"), preset
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        proj = Projection("param", "visual.proj") if visual.proj is not None else Projection("none")
        return "visual.transformer", proj, OPEN_CLIP_BLOCKS
    if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        return "visual", Projection("none"), RESNET_POINTWISE
    raise ConfigError(f"unsupported open_clip image tower {type(visual).__name__}")


def layout_for(bb: Backbone) -> TowerLayout:
    """The layout of `bb.model` (default, open_clip CLIP/CustomTextCLIP, or HF CLIP)."""
    model = bb.model
    if bb.family == "hf_clip":
        return TowerLayout(
            image_wrap="clip.vision_model",
            text_wrap="clip.text_model",
            image_proj=Projection("module", "clip.visual_projection"),
            text_proj=Projection("module", "clip.text_projection"),
            image_prefixes=("clip.vision_model.", "clip.visual_projection."),
            image_lora_preset=HF_CLIP_ATTN,
            text_lora_preset=HF_CLIP_ATTN,
            shared=("clip.logit_scale",),
        )
    image_wrap, image_proj, image_preset = _image_side(model)
    if hasattr(model, "text"):  # CustomTextCLIP: HF text tower (the default's MiniLM)
        text_wrap, text_proj, text_preset = (
            "text.transformer",
            Projection("module", "text.proj"),
            BERT_LAYERS,
        )
    else:
        tp = model.text_projection
        text_proj = (
            Projection("module", "text_projection")
            if isinstance(tp, nn.Module)
            else Projection("param", "text_projection")
            if tp is not None
            else Projection("none")
        )
        text_wrap, text_preset = "transformer", OPEN_CLIP_BLOCKS
    return TowerLayout(
        image_wrap=image_wrap,
        text_wrap=text_wrap,
        image_proj=image_proj,
        text_proj=text_proj,
        image_prefixes=("visual.",),
        image_lora_preset=image_preset,
        text_lora_preset=text_preset,
    )


def split_parameters(model: nn.Module, layout: TowerLayout) -> dict[str, dict[str, nn.Parameter]]:
    """Parameters by role: 'image', 'text' (tower bodies), 'image_proj', 'text_proj', 'shared'."""
    img_proj = set(layout.image_proj.param_names(model))
    txt_proj = set(layout.text_proj.param_names(model))
    groups: dict[str, dict[str, nn.Parameter]] = {
        k: {} for k in ("image", "text", "image_proj", "text_proj", "shared")
    }
    for name, p in model.named_parameters():
        if name in img_proj:
            groups["image_proj"][name] = p
        elif name in txt_proj:
            groups["text_proj"][name] = p
        elif name in layout.shared:
            groups["shared"][name] = p
        elif name.startswith(layout.image_prefixes):
            groups["image"][name] = p
        else:
            groups["text"][name] = p
    return groups


def pooled_features(
    model: nn.Module,
    proj: Projection,
    encode: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """Tower output before the projection: encode(x) with the projection bypassed. [B, Dpre]."""
    with proj.bypassed(model):
        return encode(x)
