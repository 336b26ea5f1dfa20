"""AdamW with decoupled weight decay on weight matrices only, and warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from domainclip.finetune.config import OptimConfig


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # Biases, norms, scalars (logit scale) and 1-d embeddings are not decayed (CLIP/open_clip practice).
    return p.ndim < 2 or "logit_scale" in name or name.endswith(".bias")


def build_optimizer(named: dict[str, nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `named` (order of the dict = parameter order in the optimizer state)."""
    decay = [p for n, p in named.items() if not _no_decay(n, p)]
    rest = [p for n, p in named.items() if _no_decay(n, p)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of cfg.lr at `step` (0-based): linear warmup, then cosine (or constant) to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, total: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
