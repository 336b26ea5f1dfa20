"""Fitting the classifier-head methods (linear probe, Tip-Adapter / Tip-Adapter-F) on cached features.

Both work on frozen, L2-normalised image features, so they never need the step loop: features are
computed once (the same cache the trainer uses), the head is fitted, validated with the same
metrics as every other method, and written as both `best` and `last` checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune.adaptation import Adaptation
from domainclip.finetune.config import FinetuneConfig
from domainclip.finetune.data import CachedFeatures, Splits
from domainclip.finetune.methods.linear_probe import fit_linear_probe
from domainclip.finetune.methods.tip_adapter import fit_tip_adapter
from domainclip.finetune.validate import ValFeatures, class_texts, encoder_for, validation_metrics
from domainclip.scoring.zeroshot import class_embeddings

log = logging.getLogger(__name__)


@torch.no_grad()
def _features(adapt: Adaptation, cache: CachedFeatures, device: torch.device) -> torch.Tensor:
    f = torch.cat(
        [
            adapt.image_from_pooled(cache.feats[i : i + 1024].to(device)).float()
            for i in range(0, len(cache.feats), 1024)
        ]
    )
    return F.normalize(f, dim=-1).cpu()


def fit_head(
    cfg: FinetuneConfig,
    adapt: Adaptation,
    splits: Splits,
    cache: dict[str, CachedFeatures],
    prompts,
    device: torch.device,
    run_dir: Path | None,
    meta: dict,
) -> tuple[dict[str, float], dict[str, float]]:
    """Fit the method's head, set it on the backbone, validate, checkpoint (when run_dir is given).

    Returns:
        (validation metrics, fit info such as the chosen C or alpha/beta).
    """
    adapt.set_train(False)
    tr, va = cache["train"], cache["val"]
    train_f, val_f = _features(adapt, tr, device), _features(adapt, va, device)
    train_y = splits.train.label_index[tr.rows]
    val_y = splits.val.label_index[va.rows]
    classes = splits.classes
    m = cfg.method
    if m.name == "linear_probe":
        head, info = fit_linear_probe(
            train_f, train_y, val_f, val_y, classes, m.linear_probe, cfg.train.seed
        )
    else:
        W = class_embeddings(adapt.bb, class_texts(prompts, classes))
        scale = float(
            adapt.model.logit_scale.detach().float().exp().clamp(max=cfg.loss.max_logit_scale)
        )
        head, info = fit_tip_adapter(
            train_f, train_y, val_f, val_y, W, classes, scale, m.tip_adapter, cfg.train.seed
        )
    adapt.head = head
    adapt.bb.head = head
    metrics = validation_metrics(
        adapt,
        splits.val,
        ValFeatures(val_f, va.rows.tolist()),
        encoder_for(adapt, device),
        prompts,
        cfg.loss.positives,
        cfg.train.batch_size,
        cfg.loss.max_logit_scale,
    )
    if run_dir is not None:
        m_meta = {
            "step": 0,
            "epoch": 0,
            "reason": "fitted",
            "best_step": 0,
            "best_metrics": metrics,
            "fit": info,
            **meta,
        }
        for name in ("best", "last"):
            ckpt.write_checkpoint(run_dir, name, adapt.save, m_meta)
    return metrics, info
