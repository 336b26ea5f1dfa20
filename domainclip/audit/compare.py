"""Did fine-tuning amplify or reduce framing sensitivity? Paired comparison of two audits.

Both models are audited on the same images, and every cell's bootstrap replicates are seeded by
the cell's key (`stats.cell_indices`), so replicate b resamples the same images for both models.
The difference |mean shift (model)| - |mean shift (base)| therefore gets a paired percentile
interval, and likewise the difference of flip rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from domainclip.audit.analysis import Cell, FramingComparison
from domainclip.audit.stats import bootstrap_p_value, cell_indices, estimate

AMPLIFIED, REDUCED, UNCLEAR = "amplified", "reduced", "no clear change"


def compare_cells(model: Cell, base: Cell, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired difference of |mean shift| and of flip rate between two models' cells."""
    if model.replicates is None or base.replicates is None or model.n != base.n:
        return {"n": model.n, "reason": model.reason or "too few images to compare"}
    diff = abs(model.mean_shift.value) - abs(base.mean_shift.value)
    reps = np.abs(model.replicates) - np.abs(base.replicates)
    est = estimate(diff, reps)
    idx = cell_indices(model.strata, n_boot, seed, model.key)
    flip_reps = model.flips[idx].mean(1) - base.flips[idx].mean(1)
    flip_diff = estimate(float(model.flips.mean() - base.flips.mean()), flip_reps)
    if est.low > 0:
        verdict = AMPLIFIED
    elif est.high < 0:
        verdict = REDUCED
    else:
        verdict = UNCLEAR
    return {
        "n": model.n,
        "abs_mean_shift_model": abs(model.mean_shift.value),
        "abs_mean_shift_base": abs(base.mean_shift.value),
        "abs_shift_difference": est.to_dict(),
        "p_value": bootstrap_p_value(reps),
        "flip_rate_model": float(model.flips.mean()),
        "flip_rate_base": float(base.flips.mean()),
        "flip_rate_difference": flip_diff.to_dict(),
        "verdict": verdict,
    }


def compare_models(
    model: Mapping[str, FramingComparison],
    base: Mapping[str, FramingComparison],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """framing -> {"overall": ..., "per_class": {class: ...}} (see `compare_cells`)."""
    out: dict[str, Any] = {}
    for name, comp in model.items():
        other = base[name]
        out[name] = {
            "overall": compare_cells(comp.overall, other.overall, n_boot, seed),
            "per_class": {
                c: compare_cells(cell, other.per_class[c], n_boot, seed)
                for c, cell in comp.per_class.items()
                if c in other.per_class
            },
        }
    return out
