"""A backbone prepared by one method: what is trainable, how features are computed, how it is saved.

This is the pure-model half (anomalib style): no optimizer, no data, no logging. The trainer
(`domainclip.finetune.trainer`) drives it; `load_model` rebuilds it from a checkpoint.

Tower modes (per tower): ``locked`` (frozen, eval mode, its features may be cached), ``lora``
(peft LoRA adapters, frozen base weights; BatchNorm statistics frozen), ``full`` (every weight).
Projections and the logit scale are trainable unless `train_projections` / `train_logit_scale`
say otherwise. Methods add their own parts: CLIP-Adapter MLPs (folded into encode_*), or a
classifier head (Tip-Adapter, linear probe) that becomes `Backbone.head`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from domainclip.finetune.config import MethodConfig
from domainclip.finetune.errors import CheckpointError
from domainclip.finetune.methods import lora as lora_mod
from domainclip.finetune.methods.clip_adapter import ClipAdapterModel, ResidualAdapter
from domainclip.finetune.methods.linear_probe import LinearProbeHead
from domainclip.finetune.methods.tip_adapter import TipAdapterHead
from domainclip.finetune.towers import (
    TowerLayout,
    layout_for,
    pooled_features,
    split_parameters,
)
from domainclip.models import Backbone

log = logging.getLogger(__name__)

HEADS_FILE = "heads.safetensors"
METHOD_FILE = "method.json"
LORA_DIRS = {"image": "image_lora", "text": "text_lora"}


def clean_name(name: str) -> str:
    """Parameter name without peft's wrapper segments (stable across wrap/unwrap/merge)."""
    return name.replace("base_model.model.", "").replace(".base_layer", "")


def base_name(model: nn.Module, name: str) -> str:
    """Name in the unadapted base model of tensor `name` of `model` (an adapted `bb.model`):
    peft's wrapper segments and, for CLIP-Adapter, the wrapped model's prefix removed."""
    name = clean_name(name)
    if isinstance(model, ClipAdapterModel):
        name = name.removeprefix(ClipAdapterModel.BASE_PREFIX)
    return name


@dataclass
class Adaptation:
    """A backbone adapted by a method (see module docstring).

    Attributes:
        bb: the Backbone; `bb.model` is the model to call (base, or base wrapped with CLIP-Adapters).
        base: the open_clip / HF model underneath, with peft wrappers at the tower wrap points.
        layout: where the towers, projections and LoRA targets are (`TowerLayout`).
        method: the method settings (tower modes resolved).
        head: classifier head for Tip-Adapter / linear probe (also set as `bb.head`), else None.
    """

    bb: Backbone
    base: nn.Module
    layout: TowerLayout
    method: MethodConfig
    head: nn.Module | None = None
    info: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.bb.model

    @property
    def modes(self) -> dict[str, str]:
        return {"image": self.method.image_tower, "text": self.method.text_tower}

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """name -> parameter for everything the optimizer updates (sorted by name: stable order)."""
        named = dict(self.model.named_parameters())
        if self.head is not None:
            named.update({f"head.{k}": p for k, p in self.head.named_parameters()})
        return {k: named[k] for k in sorted(named) if named[k].requires_grad}

    def parameter_counts(self) -> dict[str, float]:
        """{"trainable", "total", "fraction"}; a head's learned numbers count as trainable (the
        linear probe's weights, Tip-Adapter-F's keys; a training-free cache learns nothing)."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters().values() if p.requires_grad)
        if self.head is not None:
            total += sum(t.numel() for t in self.head.state_dict().values())
            trainable += int(getattr(self.head, "n_learned", 0))
        return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}

    # ------------------------------------------------------------------ modes
    def set_train(self, training: bool = True) -> None:
        """Train/eval mode; locked towers always run in eval mode, frozen BatchNorm stats stay frozen."""
        self.model.train(training)
        if training:
            for module in self._frozen_modules():
                # `.training = False` on each module, not `.eval()`, which would recurse into
                # children that belong to the other tower or to a trainable projection.
                module.training = False

    def _frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode while training (computed once per Adaptation)."""
        cached = self.info.get("_frozen_modules")
        if cached is not None:
            return cached
        prefixes = self.layout.image_prefixes
        out = []
        for name, module in self.base.named_modules():
            if not name or any(p.startswith(name + ".") and p != name + "." for p in prefixes):
                continue  # the root and containers holding both towers
            tower = "image" if (name + ".").startswith(prefixes) else "text"
            mode = self.modes[tower]
            if (mode == "locked" and not self._is_projection(name)) or (
                mode == "lora" and isinstance(module, nn.modules.batchnorm._BatchNorm)
            ):
                out.append(module)
        self.info["_frozen_modules"] = out
        return out

    def _is_projection(self, name: str) -> bool:
        return any(
            p.kind == "module" and (name == p.path or name.startswith(p.path + "."))
            for p in (self.layout.image_proj, self.layout.text_proj)
        )

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def pooled_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B, Dpre] image-tower output before the projection (for the feature cache)."""
        return pooled_features(self.base, self.layout.image_proj, self.base.encode_image, pixels)

    @torch.no_grad()
    def pooled_text(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, Dpre] text-tower output before the projection."""
        return pooled_features(self.base, self.layout.text_proj, self.base.encode_text, ids)

    def image_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, Dpre] cached tower output -> [B, D] unnormalised features (projection + adapter)."""
        f = self.layout.image_proj.apply(self.base, pooled)
        return self.model.adapt_image(f) if isinstance(self.model, ClipAdapterModel) else f

    def text_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, Dpre] -> [B, D] unnormalised text features (projection + adapter)."""
        f = self.layout.text_proj.apply(self.base, pooled)
        return self.model.adapt_text(f) if isinstance(self.model, ClipAdapterModel) else f

    # ------------------------------------------------------------------ persistence
    def state_for_heads(self) -> dict[str, torch.Tensor]:
        """Everything trained that is not a LoRA adapter: projections, logit scale, fully trained
        towers (with their buffers, e.g. BatchNorm statistics), CLIP-Adapters, the head."""
        out: dict[str, torch.Tensor] = {}
        params = dict(self.model.named_parameters())
        for name, t in self.model.state_dict().items():
            p = params.get(name)
            trained = (
                (p.requires_grad and "lora_" not in name)
                if p is not None
                else (
                    self.modes[self._tower_of(name)] == "full"  # buffers of fully trained towers
                )
            )
            if trained:
                out[f"model.{clean_name(name)}"] = t.detach()
        if self.head is not None:
            out.update({f"head.{k}": v.detach() for k, v in self.head.state_dict().items()})
        return {k: v.cpu().contiguous() for k, v in out.items()}

    def _tower_of(self, name: str) -> str:
        name = base_name(self.model, name)
        return "image" if name.startswith(self.layout.image_prefixes) else "text"

    def save(self, out_dir: Path) -> None:
        """Write LoRA adapters (peft format per tower), heads.safetensors and method.json (method
        name, tower modes, the method's settings section, the head's description)."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        for tower, wrap in (("image", self.layout.image_wrap), ("text", self.layout.text_wrap)):
            if lora_mod.is_wrapped(self.base, wrap):
                lora_mod.save_lora(self.base, wrap, out_dir / LORA_DIRS[tower])
        save_file(self.state_for_heads(), str(out_dir / HEADS_FILE))
        meta = {"method": self.method.name, "modes": self.modes}
        if self.method.settings is not None:  # the chosen method's section, beside its weights
            meta["settings"] = asdict(self.method.settings)
        if isinstance(self.head, TipAdapterHead):
            meta["head"] = {
                "kind": "tip_adapter",
                "classes": self.head.classes,
                "alpha": self.head.alpha,
                "beta": self.head.beta,
                "scale": self.head.scale,
                "keys_trained": self.head.keys_trained,
            }
        elif isinstance(self.head, LinearProbeHead):
            meta["head"] = {"kind": "linear_probe", "classes": self.head.classes}
        (out_dir / METHOD_FILE).write_text(json.dumps(meta, indent=2))

    def load_heads(self, ckpt_dir: Path) -> None:
        """Load heads.safetensors (+ the head described in method.json) from a checkpoint dir."""
        from safetensors.torch import load_file

        from domainclip.finetune.checkpoint import damaged_message

        path = ckpt_dir / HEADS_FILE
        if not path.is_file():
            raise CheckpointError(
                damaged_message(HEADS_FILE, ckpt_dir, FileNotFoundError("the file is missing"))
            )
        state = load_file(str(path))
        head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        try:
            meta = json.loads((ckpt_dir / METHOD_FILE).read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            if "head" in meta:
                self.head = _build_head(meta["head"], head_state)
                self.bb.head = self.head
            elif head_state:  # the weights hold a head that method.json does not describe
                raise ValueError(f"{HEADS_FILE} holds a head, but no 'head' entry describes it")
        except (OSError, KeyError, TypeError, ValueError) as exc:
            # without this a hand-edited method.json drops a Tip-Adapter/probe head silently
            raise CheckpointError(damaged_message(METHOD_FILE, ckpt_dir, exc)) from None
        model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        own = {clean_name(k): k for k in self.model.state_dict()}
        unknown = sorted(set(model_state) - set(own))
        if unknown:
            raise CheckpointError(
                f"{path}: {len(unknown)} tensors do not exist in this model (e.g. {unknown[:3]}); "
                "was it written for a different backbone or method?"
            )
        missing, _ = self.model.load_state_dict(
            {own[k]: v for k, v in model_state.items()}, strict=False
        )
        del missing  # everything else comes from the base weights or the peft adapters


def _build_head(meta: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    if meta["kind"] == "tip_adapter":
        head = TipAdapterHead(
            state["keys"],
            state["values"],
            meta["classes"],
            meta["alpha"],
            meta["beta"],
            meta["scale"],
        )
        head.keys.requires_grad_(False)
        return head
    if meta["kind"] == "linear_probe":
        return LinearProbeHead(state["weight"], state["bias"], meta["classes"])
    raise CheckpointError(f"unknown head kind {meta['kind']!r} in method.json")


def _lora_targets(layout: TowerLayout, method: MethodConfig, tower: str) -> str:
    custom = method.lora.image_targets if tower == "image" else method.lora.text_targets
    return custom or (layout.image_lora_preset if tower == "image" else layout.text_lora_preset)


def prepare(
    bb: Backbone, method: MethodConfig, checkpoint: Path | None = None, trainable: bool = True
) -> Adaptation:
    """Freeze/wrap `bb.model` for `method` and return the Adaptation (modifies `bb` in place).

    Args:
        bb: a freshly loaded backbone.
        method: resolved method settings (tower modes filled by `FinetuneConfig.resolve`).
        checkpoint: a checkpoint directory whose adapters/heads are loaded (peft from_pretrained
            for LoRA); None starts fresh (new LoRA adapters, initialised by peft).
        trainable: mark trained parts as requiring grad (False for inference).
    """
    base = bb.model
    layout = layout_for(bb)
    base.requires_grad_(False)
    for tower, wrap in (("image", layout.image_wrap), ("text", layout.text_wrap)):
        mode = method.image_tower if tower == "image" else method.text_tower
        if mode != "lora":
            continue
        if checkpoint is not None:
            adapter_dir = checkpoint / LORA_DIRS[tower]
            if not (adapter_dir / "adapter_config.json").is_file():
                raise CheckpointError(
                    f"{checkpoint}: missing {LORA_DIRS[tower]}/adapter_config.json"
                )
            lora_mod.load_lora(base, wrap, adapter_dir, trainable)
        else:
            top = method.lora.text_layers if tower == "text" else 0
            n = lora_mod.apply_lora(
                base, wrap, _lora_targets(layout, method, tower), method.lora, tower, top
            )
            log.info("LoRA on %d modules of the %s tower", n, tower)
    groups = split_parameters(base, layout)
    if trainable:
        for tower in ("image", "text"):
            mode = method.image_tower if tower == "image" else method.text_tower
            if mode == "full":
                for p in groups[tower].values():
                    p.requires_grad_(True)
        for p in (*groups["image_proj"].values(), *groups["text_proj"].values()):
            p.requires_grad_(method.train_projections)
        for p in groups["shared"].values():
            p.requires_grad_(method.train_logit_scale)
    if method.name == "clip_adapter":
        dim = _embed_dim(bb)
        s = method.clip_adapter
        img = ResidualAdapter(dim, s.reduction, s.ratio) if s.image else None
        txt = ResidualAdapter(dim, s.reduction, s.ratio) if s.text else None
        bb.model = ClipAdapterModel(base, img, txt)
        for m in (img, txt):
            if m is not None:
                m.requires_grad_(trainable)
    adapt = Adaptation(bb=bb, base=base, layout=layout, method=method)
    if checkpoint is not None:
        adapt.load_heads(checkpoint)
    return adapt


def _embed_dim(bb: Backbone) -> int:
    with torch.no_grad():
        ids = bb.tokenizer(["a"]).to(bb.device)
        return int(bb.model.encode_text(ids).shape[-1])
