"""Loading a fine-tuned run behind the unchanged Backbone interface, and merged export.

`load_model(RUN)` rebuilds the base backbone from RUN/config.yaml and applies the checkpoint:
LoRA adapters through peft's `PeftModel.from_pretrained`, projections/temperature/fully trained
towers from heads.safetensors, CLIP-Adapters folded into encode_image/encode_text, and
Tip-Adapter / linear-probe classifiers as `Backbone.head`. Anything that is not a run directory
is handed to `load_backbone`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from domainclip.errors import ConfigError
from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune.adaptation import LORA_DIRS, Adaptation, prepare
from domainclip.finetune.config import load_config
from domainclip.finetune.methods import lora as lora_mod
from domainclip.models import Backbone, load_backbone, save_backbone

log = logging.getLogger(__name__)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / ckpt.CONFIG_FILE).is_file() and (p / "checkpoints").is_dir()


def load_model(
    run_or_spec: str | Path, checkpoint: str = "best", device: str = "cpu", merge: bool = False
) -> Backbone:
    """A fine-tuning run (or any backbone spec) as a Backbone.

    Args:
        run_or_spec: a run directory, or a spec for `load_backbone` ('default', 'open_clip:...', ...).
        checkpoint: "best" or "last" (runs only).
        device: where the model is put.
        merge: fold LoRA adapters into the base weights (peft merge_and_unload): plain modules,
            slightly faster; outputs equal the unmerged model within float rounding.

    Returns:
        Backbone in eval mode; `bb.info` records the run, checkpoint, method and step.
    """
    if not is_run_dir(run_or_spec):
        return load_backbone(str(run_or_spec), device=device)
    return load_adaptation(run_or_spec, checkpoint, device, merge).bb


def load_adaptation(
    run: str | Path, checkpoint: str = "best", device: str = "cpu", merge: bool = False
) -> Adaptation:
    """Like `load_model`, but returns the `Adaptation` (feature functions, layout, head) of a run."""
    run = Path(run)
    if not is_run_dir(run):
        raise ConfigError(
            f"{run} is not a fine-tuning run directory (no config.yaml + checkpoints/)"
        )
    cfg = load_config(yaml.safe_load((run / ckpt.CONFIG_FILE).read_text(encoding="utf-8")))
    where = ckpt.checkpoint_dir(run, checkpoint)
    bb = load_backbone(cfg.backbone.spec, device=device)
    adapt = prepare(bb, cfg.method, checkpoint=where, trainable=False)
    if merge:
        for tower, wrap in (("image", adapt.layout.image_wrap), ("text", adapt.layout.text_wrap)):
            if (where / LORA_DIRS[tower]).is_dir():
                lora_mod.merge_lora(adapt.base, wrap)
    bb.model.to(device)
    if bb.head is not None:
        bb.head.to(device)
    bb.model.eval()
    meta = ckpt.read_meta(where)
    bb.info.update(
        run=str(run),
        checkpoint=str(where),
        method=cfg.method.name,
        step=meta.get("step"),
        merged=merge,
    )
    return adapt


def export_merged(run: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Merge LoRA into the base weights and save a directory that `load_backbone` reloads.

    Only runs whose result is a plain image-text model can be exported this way (LoRA, full
    fine-tuning, locked-image tuning). CLIP-Adapter, Tip-Adapter and linear-probe runs keep extra
    modules that a plain open_clip/HF checkpoint cannot hold; use `load_model(RUN)` for them.
    """
    if not is_run_dir(run):
        raise ConfigError(
            f"{run} is not a fine-tuning run directory (no config.yaml + checkpoints/)"
        )
    bb = load_model(run, checkpoint=checkpoint, merge=True)
    method = bb.info["method"]
    if bb.head is not None or method == "clip_adapter":
        raise ConfigError(
            f"{run} was trained with {method}, whose extra modules cannot be written into a plain "
            "backbone checkpoint. Load it with domainclip.finetune.load_model(RUN) instead."
        )
    bb.spec = f"{bb.spec} + {Path(run).name}/{checkpoint} (merged)"
    return save_backbone(bb, out_dir)
