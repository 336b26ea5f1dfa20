"""Find the layers explainers hook into, by walking module names and types.

Why not fixed attribute paths: fine-tuned runs wrap towers in peft (`visual` becomes a PeftModel
whose modules live under `visual.base_model.model...`, LoRA layers keep the original module as
`base_layer`) and adapter methods may wrap the whole model. So every lookup here walks
`named_modules()` and decides by type, shape or a probe forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from domainclip.explain.errors import ExplainError, MethodNotApplicableError

# Last name components that mark an image tower (open_clip: `visual`; transformers: `vision_model`).
_TOWER_NAMES = ("visual", "vision_model")
_TOWER_TYPES = (
    "VisionTransformer",
    "ModifiedResNet",
    "TimmModel",
    "CLIPVisionTransformer",
    "CLIPVisionModel",
)


def image_tower(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The image tower of a CLIP-style model as [(qualified name, module)], outermost first.

    open_clip (CLIP, CustomTextCLIP, peft-wrapped or not): `[("visual", ...)]`; HF CLIP:
    `[("clip.vision_model", ...), ("clip.visual_projection", ...)]` (the projection belongs to
    the image side, so randomisation checks reset it too).
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        is_tower = last in _TOWER_NAMES or type(module).__name__ in _TOWER_TYPES
        if is_tower and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    if not found:
        raise ExplainError(
            f"cannot find the image tower of {type(model).__name__}: expected a submodule named "
            f"{' or '.join(_TOWER_NAMES)} (open_clip / Hugging Face CLIP layout)"
        )
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "visual_projection":
            found.append((name, module))
    return found


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def transformer_blocks(tower: nn.Module) -> list[nn.Module]:
    """The main stack of transformer blocks of a ViT tower, in execution order.

    It is the longest `nn.ModuleList` whose items share one class and each contain an attention
    module (open_clip `transformer.resblocks`, HF `encoder.layers`, timm `blocks`).
    """
    best: list[nn.Module] = []
    for module in tower.modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
            continue
        items = list(module)
        if len({type(m) for m in items}) != 1:
            continue
        if all(any(_is_attention(s) for s in m.modules()) for m in items) and len(items) > len(
            best
        ):
            best = items
    if not best:
        raise MethodNotApplicableError(
            f"no transformer blocks found in the image tower ({type(tower).__name__}); "
            "token-based methods need a ViT tower. Use gradcam, ig or occlusion instead."
        )
    return best


def patch_size(tower: nn.Module) -> int:
    """Stride of the patch embedding: the first Conv2d with stride == kernel size."""
    for module in tower.modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.stride == module.kernel_size
            and module.stride[0] > 1
        ):
            return int(module.stride[0])
    raise ExplainError(f"cannot find the patch embedding of {type(tower).__name__}")


def tokens_batch_first(tower: nn.Module) -> bool:
    """open_clip transformers may run sequence-first (`batch_first=False`); HF and timm never do."""
    for module in tower.modules():
        flag = getattr(module, "batch_first", None)
        if isinstance(flag, bool) and any(isinstance(m, nn.ModuleList) for m in module.children()):
            return flag
    return True


@dataclass(frozen=True)
class ConvLayer:
    """The last spatial feature map of a CNN tower: `module` outputs [B, C, h, w]."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]


@torch.no_grad()
def last_conv_layer(model: nn.Module, image_size: int) -> ConvLayer:
    """Find the module producing the last downsampled 4-D feature map before global pooling.

    A probe forward of a grey image through `model.encode_image` records, for every module of the
    image tower, when its forward finished and what it returned. The last module to finish with a
    [1, C, h, w] output (1 < h < image_size, called exactly once) is the final conv stage: `bn2`
    (BatchNorm + activation after `conv_head`) for timm EfficientNet, `layer4` for ModifiedResNet.
    Containers finish after their children, so the outermost module of the last stage wins.
    """
    tower = image_tower(model)[0][1]
    names = {id(m): n for n, m in tower.named_modules()}
    calls: dict[int, int] = {}
    order: list[tuple[int, tuple[int, ...]]] = []

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            order.append((id(module), tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for m in tower.modules()]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    modules = {id(m): m for m in tower.modules()}
    for mid, shape in reversed(order):
        if calls[mid] == 1 and 1 < shape[2] < image_size and 1 < shape[3] < image_size:
            return ConvLayer(names.get(mid, "?"), modules[mid], shape)
    raise MethodNotApplicableError(
        f"no spatial feature map found in the image tower ({type(tower).__name__}); "
        "use ig or occlusion instead"
    )


class TokenGrid(nn.Module):
    """Identity on [B, C, gh, gw]: the patch tokens as a feature map, for Captum's layer methods.

    LayerGradCam averages gradients over every dimension after the channel one, so it needs a
    layer whose output is (B, C, H, W). Token blocks give (B, N, C); `token_grid` routes the patch
    tokens through this module reshaped to the grid and puts them back unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextlib.contextmanager
def token_grid(
    block: nn.Module, grid_hw: tuple[int, int], batch_first: bool = True
) -> Iterator[TokenGrid]:
    """While active, the input tokens of `block` pass through the yielded `TokenGrid`.

    The input of the last block is used (not its output) because a class-token tower pools only
    the class token of the last block's output, so its patch tokens would get zero gradient; the
    last block's input patch tokens reach the class token through its attention.

    Args:
        block: the last transformer block of the image tower.
        grid_hw: (gh, gw) patch grid of the current input size.
        batch_first: token layout of the block input ([B, N, C] if True, else [N, B, C]).
    """
    grid = TokenGrid()
    gh, gw = grid_hw

    def through_grid(x: torch.Tensor) -> torch.Tensor:
        tokens = x if batch_first else x.transpose(0, 1)
        b, n, c = tokens.shape
        prefix = n - gh * gw
        if not 0 <= prefix <= 16:
            raise ExplainError(
                f"{n} tokens do not match a {gh}x{gw} patch grid; is the input the tower's "
                "image size?"
            )
        patches = tokens[:, prefix:].transpose(1, 2).reshape(b, c, gh, gw)
        patches = grid(patches).reshape(b, c, gh * gw).transpose(1, 2)
        out = torch.cat([tokens[:, :prefix], patches], dim=1)
        return out if batch_first else out.transpose(0, 1)

    def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (through_grid(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": through_grid(kwargs["hidden_states"])}

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield grid
    finally:
        handle.remove()


def _attention_module(block: nn.Module) -> nn.Module:
    # The innermost attention module: peft keeps the original nn.MultiheadAttention as base_layer.
    found = [m for m in block.modules() if _is_attention(m)]
    plain = [m for m in found if isinstance(m, nn.MultiheadAttention)]
    return plain[-1] if plain else found[0]


@contextlib.contextmanager
def record_attention(blocks: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """While active, every forward appends each block's attention probabilities [B, heads, N, N].

    The probabilities stay in the autograd graph (for gradient-weighted rollout). Supports
    `nn.MultiheadAttention` (open_clip; weights forced on via its call kwargs), Hugging Face
    attention modules (switched to the eager implementation, which returns them) and timm
    `Attention` (non-fused path; probabilities read at `attn_drop`). All changes are undone on exit.
    """
    recorded: list[torch.Tensor] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    restore: list[tuple[object, str, object]] = []

    def keep_second(_m: nn.Module, _i: object, out: tuple) -> None:
        if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
            recorded.append(out[1])

    def want_weights(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    try:
        for block in blocks:
            attn = _attention_module(block)
            if isinstance(attn, nn.MultiheadAttention):
                handles.append(attn.register_forward_pre_hook(want_weights, with_kwargs=True))
                handles.append(attn.register_forward_hook(keep_second))
            elif hasattr(getattr(attn, "config", None), "_attn_implementation"):
                cfg = attn.config
                if not any(obj is cfg for obj, _, _ in restore):
                    restore.append((cfg, "_attn_implementation", cfg._attn_implementation))
                    cfg._attn_implementation = "eager"
                handles.append(attn.register_forward_hook(keep_second))
            elif hasattr(attn, "fused_attn") and hasattr(attn, "attn_drop"):
                restore.append((attn, "fused_attn", attn.fused_attn))
                attn.fused_attn = False
                handles.append(
                    attn.attn_drop.register_forward_hook(lambda _m, _i, o: recorded.append(o))
                )
            else:
                raise MethodNotApplicableError(
                    f"cannot read attention probabilities from {type(attn).__name__}; "
                    "use gradcam, ig or occlusion instead"
                )
        yield recorded
    finally:
        for h in handles:
            h.remove()
        for obj, attr, value in reversed(restore):
            setattr(obj, attr, value)


def token_embedding(model: nn.Module) -> tuple[str, nn.Module]:
    """The text tower's token-embedding layer (the largest nn.Embedding outside the image tower).

    If peft wrapped it (LoRA on embeddings keeps the original as `base_layer`), the wrapper is
    returned so attributions include the adapter's contribution.
    """
    image_names = [n for n, _ in image_tower(model)]
    best: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if any(name == n or name.startswith(f"{n}.") for n in image_names):
            continue
        if isinstance(module, nn.Embedding) and (
            best is None or module.num_embeddings > best[1].num_embeddings
        ):
            best = (name, module)
    if best is None:
        raise ExplainError(f"no token embedding found in the text tower of {type(model).__name__}")
    name = best[0]
    if name.endswith(".base_layer"):
        parent = name.rsplit(".", 1)[0]
        return parent, model.get_submodule(parent)
    return best
