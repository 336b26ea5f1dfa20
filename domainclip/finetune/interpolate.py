"""Weight-space interpolation between a base and a fine-tuned model (WiSE-FT, Wortsman et al. 2022).

theta(alpha) = (1 - alpha) * theta_base + alpha * theta_ft, applied in place to the fine-tuned
model inside a context manager and undone on exit. Works on the module as `load_model` returns it;
each method says how its own adaptation scales, this module only combines them:

* tensors that also exist in the base model (same name after `adaptation.base_name`, same shape)
  are blended (projections, logit scale, fully fine-tuned towers, merged LoRA weights);
* unmerged LoRA: the tensors `lora.scaled_lora_tensors` names are multiplied by alpha (the other
  LoRA tensors have no base counterpart and stay);
* modules and classifier heads with a `scaled(alpha)` context manager (CLIP-Adapter's residual
  ratio, Tip-Adapter's cache weight) scale themselves; their own tensors are left alone;
* a head without `scaled` (linear probe: no base model counterpart) is used as is and reported.
Any other tensor without a base counterpart is an error (interpolation would be undefined).

    plan = plan_interpolation(base, ft)          # once per pair
    with interpolated(ft, plan, 0.5) as bb:      # bb is ft at theta(0.5)
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from domainclip.errors import ConfigError
from domainclip.finetune.adaptation import base_name
from domainclip.finetune.methods.lora import is_lora_tensor, scaled_lora_tensors
from domainclip.models import Backbone


@dataclass
class InterpolationPlan:
    """Which tensors and modules interpolate and how (computed once per base/fine-tuned pair).

    Attributes:
        blend: fine-tuned state-dict key -> the base tensor it is blended with.
        lora_b: state-dict keys multiplied by alpha (unmerged LoRA updates).
        scaled: modules (adapters, the head) whose own `scaled(alpha)` is entered.
        notes: what a reader of the curve should know (e.g. a head left as is).
        n_changed: tensors/modules that differ between base and fine-tuned.
    """

    blend: dict[str, torch.Tensor] = field(default_factory=dict)
    lora_b: list[str] = field(default_factory=list)
    scaled: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_changed: int = 0


def _scales_itself(module: Any) -> bool:
    return callable(getattr(module, "scaled", None))


def plan_interpolation(base: Backbone, ft: Backbone) -> InterpolationPlan:
    """Match the fine-tuned model's tensors to the base model's (see the module docstring).

    Raises:
        ConfigError: a tensor of the fine-tuned model has no base counterpart and no known rule.
    """
    base_state = {k: v.detach() for k, v in base.model.state_dict().items()}
    plan = InterpolationPlan()
    own_prefixes = []  # tensors of self-scaling modules: scaled through the module, not blended
    for name, module in ft.model.named_modules():
        if name and _scales_itself(module):
            plan.scaled.append(module)
            own_prefixes.append(name + ".")
    ft_state = ft.model.state_dict()
    plan.lora_b = scaled_lora_tensors(ft_state)
    unmatched = []
    for key, t in ft_state.items():
        if is_lora_tensor(key) or key.startswith(tuple(own_prefixes)):
            continue
        b = base_state.get(base_name(ft.model, key))
        if b is None or b.shape != t.shape:
            unmatched.append(key)
        elif t.is_floating_point() and not torch.equal(b.to(t.device), t):
            plan.blend[key] = b.to(t.device)
    if unmatched:
        raise ConfigError(
            f"cannot interpolate {ft.spec} with its base {base.spec}: {len(unmatched)} tensors have no "
            f"base counterpart (e.g. {unmatched[:3]}); is the run's backbone.spec the model it was "
            "fine-tuned from?"
        )
    head = ft.head
    if head is not None and _scales_itself(head):
        plan.scaled.append(head)
        part = getattr(head, "scaled_part", type(head).__name__)
        plan.notes.append(f"{part} scaled with the interpolation weight")
    elif head is not None:
        plan.notes.append(
            f"classifier head {type(head).__name__} is not interpolated (used as is for the target task)"
        )
    plan.n_changed = len(plan.blend) + len(plan.lora_b) + len(plan.scaled)
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
        with contextlib.ExitStack() as stack:
            with torch.no_grad():
                for k, b in plan.blend.items():
                    state[k].copy_((1.0 - alpha) * b + alpha * saved[k])
                for k in plan.lora_b:
                    state[k].mul_(alpha)
            for module in plan.scaled:
                stack.enter_context(module.scaled(alpha))
            yield ft
    finally:
        # A fresh state dict: peft's MultiheadAttention may have swapped parameter objects meanwhile.
        current = ft.model.state_dict()
        with torch.no_grad():
            for k, v in saved.items():
                current[k].copy_(v)
