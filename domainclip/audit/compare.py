"""Did fine-tuning amplify or reduce framing sensitivity? Paired comparison of two audits.

Sensitivity here is the mean *absolute* per-image shift, mean_i |d_i|: how far a wording moves an
image's score, whatever the direction. (|mean_i d_i| would let opposite moves cancel, and the
absolute value of a bootstrap mean is biased away from 0, which makes two near-zero shifts look
different.) Both models are audited on the same images, and a cell's bootstrap replicates are
seeded by the cell's key (`stats.cell_indices`), so replicate b resamples the same images for both
models: the difference of sensitivities gets a paired percentile interval, as does the
difference of flip rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from domainclip.audit.analysis import Cell, FramingComparison
from domainclip.audit.stats import bootstrap_p_value, cell_indices, estimate

AMPLIFIED, REDUCED, UNCLEAR = "amplified", "reduced", "no clear change"


def compare_cells(model: Cell, base: Cell, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired differences (model - base) of mean |shift| and of flip rate on one cell."""
    if model.d is None or base.d is None or model.n != base.n:
        return {"n": model.n, "reason": model.reason or "too few images to compare"}
    idx = cell_indices(model.strata, n_boot, seed, model.key)
    abs_m, abs_b = np.abs(model.d), np.abs(base.d)
    est = estimate(float(abs_m.mean() - abs_b.mean()), abs_m[idx].mean(1) - abs_b[idx].mean(1))
    reps = abs_m[idx].mean(1) - abs_b[idx].mean(1)
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
        "mean_abs_shift_model": float(abs_m.mean()),
        "mean_abs_shift_base": float(abs_b.mean()),
        "mean_abs_shift_difference": est.to_dict(),
        "p_value": bootstrap_p_value(reps),
        "mean_shift_model": model.mean_shift.value,
        "mean_shift_base": base.mean_shift.value,
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
