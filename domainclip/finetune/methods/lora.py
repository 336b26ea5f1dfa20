"""LoRA on a tower via HF peft (one `PeftModel` per tower, saved in peft's own format).

Each tower is wrapped at its wrap point (see `domainclip.finetune.towers`), so the adapters of
each tower live in their own directory (`adapter_config.json` + `adapter_model.safetensors`)
that plain peft can load onto the same base module.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from torch import nn

from domainclip.errors import ConfigError
from domainclip.finetune.config import LoraSettings
from domainclip.finetune.towers import get_path, set_path


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    # transformers warns about deprecated gradient-checkpointing attributes that peft probes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _matching(module: nn.Module, regex: str) -> list[str]:
    pattern = re.compile(regex)
    return [n for n, _ in module.named_modules() if n and pattern.fullmatch(n)]


# The index of a transformer layer in a module name: BERT `encoder.layer.3.`, HF CLIP
# `encoder.layers.3.`, open_clip `transformer.resblocks.3.`.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|resblocks)\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The transformer layer a module name belongs to (None: not inside a numbered layer)."""
    m = LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def count_layers(module: nn.Module) -> int:
    """Number of numbered transformer layers in `module` (0 when it has none)."""
    found = [layer_index(n) for n, _ in module.named_modules()]
    return max((i for i in found if i is not None), default=-1) + 1


def top_layer_names(module: nn.Module, names: list[str], top: int) -> list[str]:
    """The names among `names` inside the top `top` numbered layers of `module` (top 0 = all)."""
    if top <= 0:
        return names
    first = count_layers(module) - top
    return [n for n in names if (i := layer_index(n)) is not None and i >= first]


def apply_lora(
    model: nn.Module,
    wrap_path: str,
    targets: str,
    settings: LoraSettings,
    tower: str,
    top_layers: int = 0,
) -> int:
    """Wrap `model.<wrap_path>` in a peft LoRA model. Returns the number of adapted modules.

    top_layers > 0 keeps only the matched modules inside the top `top_layers` numbered layers
    of the tower (`method.lora.text_layers`); peft then gets their exact names.

    Raises:
        ConfigError: the target regex matches no module of the tower (names a few that exist).
    """
    from peft import LoraConfig, get_peft_model

    module = get_path(model, wrap_path)
    matched = top_layer_names(module, _matching(module, targets), top_layers)
    if not matched:
        sample = [n for n, m in module.named_modules() if n and not list(m.children())][:8]
        within = f" within its top {top_layers} layers" if top_layers else ""
        raise ConfigError(
            f"method.lora.{tower}_targets: regex {targets!r} matches no module of the {tower} tower "
            f"({type(module).__name__}){within}; leaf modules look like: {', '.join(sample)}"
        )
    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=matched if top_layers > 0 else targets,
    )
    try:
        with _peft_quietly():
            set_path(model, wrap_path, get_peft_model(module, cfg))
    except (ValueError, TypeError) as exc:  # e.g. a module type peft cannot adapt
        raise ConfigError(
            f"peft cannot put LoRA on the {tower} tower with {targets!r}: {exc}"
        ) from exc
    return len(matched)


def save_lora(model: nn.Module, wrap_path: str, out_dir: Path) -> None:
    """Write the tower's adapters in peft format into `out_dir`."""
    get_path(model, wrap_path).save_pretrained(str(out_dir))


def load_lora(model: nn.Module, wrap_path: str, adapter_dir: Path, trainable: bool) -> None:
    """Put saved adapters onto the (unwrapped) tower at `wrap_path`."""
    from peft import PeftModel

    with _peft_quietly():
        wrapped = PeftModel.from_pretrained(
            get_path(model, wrap_path), str(adapter_dir), is_trainable=trainable
        )
    set_path(model, wrap_path, wrapped)


def merge_lora(model: nn.Module, wrap_path: str) -> None:
    """Fold the adapters into the base weights and drop the peft wrapper (merge_and_unload)."""
    set_path(model, wrap_path, get_path(model, wrap_path).merge_and_unload())


def is_lora_tensor(name: str) -> bool:
    """True for peft's LoRA tensors (lora_A, lora_B, ...): they have no base-model counterpart."""
    return "lora_" in name


def scaled_lora_tensors(names: Iterable[str]) -> list[str]:
    """The LoRA tensors to multiply by alpha so that every update is scaled by alpha (WiSE-FT).

    peft's update is scaling * B @ A, linear in B: scaling B scales it exactly, which equals
    interpolating the merged weights between base and fine-tuned. A stays.
    """
    return [n for n in names if "lora_B" in n]


def is_wrapped(model: nn.Module, wrap_path: str) -> bool:
    from peft import PeftModel

    return isinstance(get_path(model, wrap_path), PeftModel)
