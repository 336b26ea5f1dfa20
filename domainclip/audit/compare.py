"""Did fine-tuning amplify or reduce framing sensitivity? Paired comparison of two audits.

Sensitivity here is the mean *absolute* per-image shift, mean_i |d_i|: how far a wording moves an
image's score, whatever the direction. (|mean_i d_i| would let opposite moves cancel, and the
absolute value of a bootstrap mean is biased away from 0, which makes two near-zero shifts look
different.) Both models are audited on the same images, and a cell's bootstrap replicates are
seeded by the cell's key (`stats.cell_indices`), so replicate b resamples the same images for both
models: the difference of sensitivities gets a paired percentile interval, as does the
difference of flip rates.

Raw shifts are not comparable across models: a near-uniform model (at chance) has probabilities
that barely move whatever the wording, so a model that has learned anything shows larger raw
shifts. The verdict therefore rests on two scale-free measures: the flip rate (share of top-1
decisions a wording changes) and the shift normalised by each model's own score spread (mean
|shift| / standard deviation of the model's target-class probability under the reference framing).
Amplified = one of them significantly up and neither significantly down (reduced likewise); both
ways = "mixed". When the base model is near chance (`floor.near_chance`) its probabilities carry
no signal for wording to move, so shifts say nothing: the verdict then rests on the flip rate alone
(its decisions still flip or not); the cell says `informative: false` with a note, and reports
call the comparison uninformative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from domainclip.audit.analysis import Cell, FramingComparison
from domainclip.audit.stats import bootstrap_p_value, cell_indices, estimate

AMPLIFIED, REDUCED, UNCLEAR = "amplified", "reduced", "no clear change"
MIXED = "mixed"


def _direction(e: Any) -> str:
    if e.low is not None and e.low > 0:
        return AMPLIFIED
    if e.high is not None and e.high < 0:
        return REDUCED
    return UNCLEAR


def _combine(flip: str, shift: str, base_near_chance: bool) -> str:
    """The verdict from the flip-rate and the normalised-shift directions."""
    if base_near_chance:
        return flip
    moves = {flip, shift} - {UNCLEAR}
    if len(moves) == 2:
        return MIXED
    return moves.pop() if moves else UNCLEAR


def compare_cells(
    model: Cell,
    base: Cell,
    n_boot: int,
    seed: int,
    spread: tuple[float, float] = (1.0, 1.0),
    base_near_chance: bool = False,
) -> dict[str, Any]:
    """Paired differences (model - base) on one cell: mean |shift|, mean |shift| normalised by
    each model's score spread (`spread` = (model, base) standard deviations of the target-class
    probability under the reference), and flip rate; the verdict (see module doc)."""
    if model.d is None or base.d is None or model.n != base.n:
        return {"n": model.n, "reason": model.reason or "too few images to compare"}
    idx = cell_indices(model.strata, n_boot, seed, model.key)
    abs_m, abs_b = np.abs(model.d), np.abs(base.d)
    est = estimate(float(abs_m.mean() - abs_b.mean()), abs_m[idx].mean(1) - abs_b[idx].mean(1))
    reps = abs_m[idx].mean(1) - abs_b[idx].mean(1)
    s_m, s_b = (max(float(s), 1e-12) for s in spread)
    norm = estimate(
        float(abs_m.mean() / s_m - abs_b.mean() / s_b),
        abs_m[idx].mean(1) / s_m - abs_b[idx].mean(1) / s_b,
    )
    flip_reps = model.flips[idx].mean(1) - base.flips[idx].mean(1)
    flip_diff = estimate(float(model.flips.mean() - base.flips.mean()), flip_reps)
    shift_reps = model.d[idx].mean(1) - base.d[idx].mean(1)
    shift_diff = estimate(float(model.d.mean() - base.d.mean()), shift_reps)
    flip_dir, shift_dir = _direction(flip_diff), _direction(norm)
    verdict = _combine(flip_dir, shift_dir, base_near_chance)
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
        "normalised_shift_model": float(abs_m.mean() / s_m),
        "normalised_shift_base": float(abs_b.mean() / s_b),
        "normalised_shift_difference": norm.to_dict(),
        "raw_shift_direction": _direction(est),
        "flip_direction": flip_dir,
        "normalised_shift_direction": shift_dir,
        "verdict": verdict,
        "informative": not base_near_chance,
        # side by side, each with its interval; differences paired by image (same replicates)
        "side_by_side": {
            "mean_shift_model": model.mean_shift.to_dict(),
            "mean_shift_base": base.mean_shift.to_dict(),
            "flip_rate_model": model.flip_rate.to_dict(),
            "flip_rate_base": base.flip_rate.to_dict(),
            "mean_shift_difference": shift_diff.to_dict(),
            "mean_shift_difference_p": bootstrap_p_value(shift_reps),
            "flip_rate_difference_p": bootstrap_p_value(flip_reps),
        },
        **(
            {"note": "the base model is near chance, so score shifts are uninformative (a "
             "near-uniform model cannot move); the verdict rests on flip rates alone"}
            if base_near_chance
            else {}
        ),
    }


def compare_models(
    model: Mapping[str, FramingComparison],
    base: Mapping[str, FramingComparison],
    n_boot: int,
    seed: int,
    spread: tuple[float, float] = (1.0, 1.0),
    base_near_chance: bool = False,
) -> dict[str, Any]:
    """framing -> {"overall": ..., "per_class": {class: ...}} (see `compare_cells`)."""
    out: dict[str, Any] = {}
    opts = {"spread": spread, "base_near_chance": base_near_chance}
    for name, comp in model.items():
        other = base[name]
        out[name] = {
            "overall": compare_cells(comp.overall, other.overall, n_boot, seed, **opts),
            "per_class": {
                c: compare_cells(cell, other.per_class[c], n_boot, seed, **opts)
                for c, cell in comp.per_class.items()
                if c in other.per_class
            },
        }
    return out
