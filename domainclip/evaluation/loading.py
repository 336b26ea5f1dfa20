"""Resolve what to evaluate: a Backbone object, a fine-tuning run directory, or a backbone spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainclip.errors import BackboneError, ConfigError
from domainclip.models import Backbone, load_backbone

RUN_CONFIG = "config.yaml"


def is_run_dir(path: str | Path) -> bool:
    """A fine-tuning run directory is recognised by its resolved config.yaml."""
    return Path(path).is_dir() and (Path(path) / RUN_CONFIG).is_file()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved config as a plain dict (only read here; the trainer owns its schema)."""
    import yaml

    path = Path(run_dir) / RUN_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping of config sections")
    return data


def run_setting(cfg: dict[str, Any], dotted: str) -> Any:
    """cfg value at 'section.key' or None (e.g. run_setting(cfg, 'eval.prompts'))."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_for_eval(
    model_or_run: Backbone | str | Path, checkpoint: str = "best", device: str = "cpu"
) -> tuple[Backbone, Path | None]:
    """(backbone, run_dir or None). Run dirs go through `domainclip.finetune.load_model`."""
    if isinstance(model_or_run, Backbone):
        return model_or_run, None
    target = str(model_or_run)
    if is_run_dir(target):
        try:
            from domainclip.finetune import load_model
        except ImportError as exc:
            raise BackboneError(
                f"{target} is a fine-tuning run, but domainclip.finetune.load_model is not "
                f"available in this installation ({exc})"
            ) from exc
        bb = load_model(target, checkpoint=checkpoint)
        bb.model.to(device)
        return bb, Path(target)
    return load_backbone(target, device=device), None


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
