"""Forgetting monitor: a reference task before/after fine-tuning and along a WiSE-FT sweep.

For each interpolation weight alpha (0 = base weights, 1 = fine-tuned) the target task (the data
the model was tuned for, classified through `bb.class_logits`, heads included) and a reference task
(by default zero-shot on a second manifest, scored by plain image-text similarity: a head
belongs to the target task's classes) are evaluated. The curve shows how much reference ability
the fine-tuning costs and which alpha keeps most of both.

Cost: every alpha embeds the images of both tasks once (prompts once per alpha too). When the image
features at alpha = 0 and alpha = 1 are identical (image tower untouched, e.g. the default
locked-image recipe) they are reused for every alpha.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainclip.datasets.manifest import Manifest
from domainclip.evaluation.bootstrap import DEFAULT_N_BOOT, Estimate, bootstrap_metrics, strata_of
from domainclip.evaluation.embed import EmbeddedSplit, embed_split
from domainclip.evaluation.metrics import accuracy, roc_auc_columns
from domainclip.evaluation.task import Targets, ZeroShotTask, build_targets
from domainclip.finetune.interpolate import interpolated, plan_interpolation
from domainclip.models import Backbone
from domainclip.scoring.prompts import PromptSet

log = logging.getLogger(__name__)

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class TaskSpec:
    """One zero-shot task: a manifest split scored with a prompt set over `classes`."""

    name: str
    manifest: Manifest
    split: str | None
    ps: PromptSet
    classes: list[str]
    use_head: bool  # target task: through bb.class_logits (head); reference: plain similarity


def _metric_name(ps: PromptSet) -> str:
    return "macro_auroc" if ps.multi_label else "accuracy"


def _score(
    bb: Backbone, spec: TaskSpec, emb: EmbeddedSplit, tgt: Targets, n_boot: int, seed: int
) -> Estimate:
    task = ZeroShotTask.build(bb, spec.ps, spec.classes)

    def score(feats: torch.Tensor) -> torch.Tensor:
        if spec.use_head:
            return task.logits(bb, feats)
        if task.W_neg is None:
            return bb.similarity(feats, task.W)
        return bb.similarity(feats, task.W) - bb.similarity(feats, task.W_neg)

    logits = emb.scores(score, tgt.keep)  # tiled images: per tile, aggregated
    z = logits.double().numpy()
    if spec.ps.multi_label:

        def stat(idx: np.ndarray) -> dict[str, float | None]:
            vals = [v for v in roc_auc_columns(tgt.y[idx].astype(bool), z[idx]) if v is not None]
            return {"m": float(np.mean(vals)) if vals else None}

        keys: list[Any] = [tuple(np.flatnonzero(r)) for r in tgt.y]
    else:
        pred = z.argmax(1)

        def stat(idx: np.ndarray) -> dict[str, float | None]:
            return {"m": accuracy(tgt.y[idx], pred[idx])}

        keys = tgt.y.tolist()
    reasons = {"m": "no class has both positive and negative images"}
    return bootstrap_metrics(stat, strata_of(keys), n_boot, seed, reasons=reasons)["m"]


def forgetting_curve(
    base: Backbone,
    ft: Backbone,
    target: TaskSpec,
    reference: TaskSpec,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    skip_uncovered: bool = True,
    transform: Callable | None = None,
) -> dict[str, Any]:
    """Sweep alpha and score both tasks (images preprocessed with `transform`, default
    `eval_transform(ft)`: every model on the curve sees the same pixels). Returns a JSON-ready dict:
    {"alphas", "metric" (target), "reference_metric", "target": [Estimate dicts], "reference": [...],
    "target_name", "reference_name", "n_target", "n_reference", "notes", "image_features_reused"}.
    """
    alphas = sorted(set(float(a) for a in alphas))
    plan = plan_interpolation(base, ft)
    if plan.n_changed == 0:
        plan.notes.append("the fine-tuned weights equal the base weights: the curve must be flat")
    # Embed the ends first; equal image features at both ends mean the image tower never changed.
    order = sorted(alphas, key=lambda a: (a not in (0.0, 1.0), a))
    cache: dict[float, dict[str, EmbeddedSplit]] = {}
    targets: dict[str, Targets] = {}
    results: dict[float, dict[str, Estimate]] = {}
    reuse = None
    for a in order:
        with interpolated(ft, plan, a) as bb:
            if reuse is None and 0.0 in cache and 1.0 in cache:
                reuse = all(
                    torch.equal(cache[0.0][s.name].image_feats, cache[1.0][s.name].image_feats)
                    for s in (target, reference)
                )
            cache[a] = {}
            for spec in (target, reference):
                emb = (
                    cache[0.0][spec.name]
                    if reuse
                    else embed_split(bb, spec.manifest, spec.split, transform=transform)
                )
                cache[a][spec.name] = emb
                if spec.name not in targets:
                    targets[spec.name] = build_targets(
                        emb.rows, spec.classes, spec.ps, skip_uncovered
                    )
            results[a] = {
                spec.name: _score(bb, spec, cache[a][spec.name], targets[spec.name], n_boot, seed)
                for spec in (target, reference)
            }
            log.info(
                "alpha %.2f: %s %s, %s %s",
                a,
                target.name,
                results[a][target.name].fmt(),
                reference.name,
                results[a][reference.name].fmt(),
            )
    return {
        "alphas": alphas,
        "metric": _metric_name(target.ps),
        "reference_metric": _metric_name(reference.ps),
        "target_name": target.name,
        "reference_name": reference.name,
        "target": [results[a][target.name].to_dict() for a in alphas],
        "reference": [results[a][reference.name].to_dict() for a in alphas],
        "n_target": int(len(targets[target.name].keep)),
        "n_reference": int(len(targets[reference.name].keep)),
        "image_features_reused": bool(reuse),
        "interpolated_tensors": plan.n_changed,
        "notes": plan.notes,
    }


def write_forgetting(curve: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """forgetting.json + forgetting.png in `out_dir`."""
    from domainclip.evaluation.plots import plot_forgetting_curve
    from domainclip.io import atomic_write_json

    def values(ds: list[dict]) -> list[float]:
        return [float("nan") if d["value"] is None else d["value"] for d in ds]

    out = Path(out_dir)
    atomic_write_json(out / "forgetting.json", curve)
    png = plot_forgetting_curve(
        curve["alphas"],
        values(curve["target"]),
        values(curve["reference"]),
        out / "forgetting.png",
        target_name=f"target: {curve['target_name']} ({curve['metric']})",
        reference_name=f"reference: {curve['reference_name']} ({curve['reference_metric']})",
        metric="metric",
        target_ci=[d["ci95"] for d in curve["target"]],
        reference_ci=[d["ci95"] for d in curve["reference"]],
    )
    return {"forgetting": str(out / "forgetting.json"), "forgetting_plot": str(png)}
