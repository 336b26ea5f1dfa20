"""Weight-space interpolation between a base and a fine-tuned model (WiSE-FT, Wortsman et al. 2022).

theta(alpha) = (1 - alpha) * theta_base + alpha * theta_ft, applied in place to the fine-tuned
model inside a context manager and undone on exit. Works on the module as `load_model` returns it:

* tensors that also exist in the base model (same cleaned name and shape: peft's
  ``base_model.model.`` / ``.base_layer`` segments and a CLIP-Adapter ``clip.`` prefix removed) are
  interpolated (projections, logit scale, fully fine-tuned towers, merged LoRA weights);
* unmerged LoRA: ``lora_B`` tensors are scaled by alpha, which scales the low-rank update
  scaling * B @ A by alpha exactly (the same as interpolating the merged weights);
* modules with a residual mixing `ratio` (CLIP-Adapter: ratio * MLP(f) + (1 - ratio) * f) get
  ratio * alpha, so alpha = 0 is the identity the base model computes;
* a classifier head with a residual weight `alpha` (Tip-Adapter's cache term) gets alpha * alpha;
  other heads (linear probe) are left unchanged and reported.
Any other tensor without a base counterpart is an error (interpolation would be undefined).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from domainclip.errors import ConfigError
from domainclip.models import Backbone


def clean_key(name: str, base_keys: set[str] | dict) -> str:
    """Name of a fine-tuned model's tensor in the base model's state dict."""
    c = name.replace("base_model.model.", "").replace(".base_layer", "")
    if c not in base_keys and c.startswith("clip.") and c[5:] in base_keys:
        c = c[5:]
    return c


@dataclass
class InterpolationPlan:
    """Which tensors/modules interpolate and how (computed once per base/fine-tuned pair)."""

    blend: dict[str, torch.Tensor] = field(default_factory=dict)  # ft key -> base tensor
    lora_b: list[str] = field(default_factory=list)  # ft keys scaled by alpha
    ratio_modules: list[tuple[nn.Module, float]] = field(default_factory=list)
    head_alpha: float | None = None
    notes: list[str] = field(default_factory=list)
    n_changed: int = 0  # tensors that differ between base and fine-tuned


def plan_interpolation(base: Backbone, ft: Backbone) -> InterpolationPlan:
    """Match the fine-tuned model's tensors to the base model's (see module docstring).

    Raises:
        ConfigError: a tensor of the fine-tuned model has no base counterpart and no known rule.
    """
    base_state = {k: v.detach() for k, v in base.model.state_dict().items()}
    plan = InterpolationPlan()
    adapter_prefixes = []
    for name, module in ft.model.named_modules():
        ratio = getattr(module, "ratio", None)
        if isinstance(ratio, float) and name:
            plan.ratio_modules.append((module, ratio))
            adapter_prefixes.append(name + ".")
    unmatched = []
    for key, t in ft.model.state_dict().items():
        if "lora_B" in key:
            plan.lora_b.append(key)
            plan.n_changed += 1
            continue
        if "lora_" in key or key.startswith(tuple(adapter_prefixes)):
            continue  # lora_A (scaled through B) and CLIP-Adapter MLPs (scaled through ratio)
        ck = clean_key(key, base_state)
        b = base_state.get(ck)
        if b is None or b.shape != t.shape:
            unmatched.append(key)
            continue
        if t.is_floating_point() and not torch.equal(b.to(t.device), t):
            plan.blend[key] = b.to(t.device)
            plan.n_changed += 1
    if unmatched:
        raise ConfigError(
            f"cannot interpolate {ft.spec} with its base {base.spec}: {len(unmatched)} tensors have no "
            f"base counterpart (e.g. {unmatched[:3]}); is the run's backbone.spec the model it was "
            "fine-tuned from?"
        )
    head = ft.head
    if head is not None:
        if isinstance(getattr(head, "alpha", None), float):
            plan.head_alpha = head.alpha
            plan.n_changed += 1
            plan.notes.append("Tip-Adapter cache weight alpha scaled with the interpolation weight")
        else:
            plan.notes.append(
                f"classifier head {type(head).__name__} is not interpolated (used as is for the target task)"
            )
    plan.n_changed += len(plan.ratio_modules)
    return plan


@contextlib.contextmanager
def interpolated(ft: Backbone, plan: InterpolationPlan, alpha: float) -> Iterator[Backbone]:
    """Temporarily set `ft`'s weights to theta(alpha); restores every float tensor exactly on exit."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"interpolation weight must be in [0, 1], got {alpha}")
    state = ft.model.state_dict()
    # Every float tensor is saved, not only the interpolated ones: peft's MultiheadAttention LoRA
    # adds and subtracts its update around each forward, leaving rounding drift in base weights.
    saved = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
    try:
        with torch.no_grad():
            for k, b in plan.blend.items():
                state[k].copy_((1.0 - alpha) * b + alpha * saved[k])
            for k in plan.lora_b:
                state[k].mul_(alpha)
            for module, ratio in plan.ratio_modules:
                module.ratio = ratio * alpha
            if plan.head_alpha is not None:
                ft.head.alpha = plan.head_alpha * alpha
        yield ft
    finally:
        # A fresh state dict: peft's MultiheadAttention may have swapped parameter objects meanwhile.
        current = ft.model.state_dict()
        with torch.no_grad():
            for k, v in saved.items():
                current[k].copy_(v)
            for module, ratio in plan.ratio_modules:
                module.ratio = ratio
            if plan.head_alpha is not None:
                ft.head.alpha = plan.head_alpha
