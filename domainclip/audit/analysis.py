"""Per-framing statistics of a score table: shifts vs the reference, flips, calibration, breakdowns.

For framing k and reference r, on a cell S of images (all, one class, one subgroup value):

* d_i = p_k(target_i | image_i) - p_r(target_i | image_i), the paired shift of the temperature-scaled
  target-class probability; its mean with a 95% bootstrap-t interval and the two-sided p-value of
  "mean shift = 0" read off the same replicates (images resampled, both framings kept together),
  its median with a 95% percentile interval;
* the same mean shift of the raw similarity (model units, before softmax and temperature);
* Wilcoxon signed-rank test of the d_i (scipy);
* flip rate: the share of images whose top-1 decision differs from the reference's, Wilson interval.

Calibration per framing: ECE (equal-width bins, `domainclip.evaluation.calibration`) and accuracy,
with stratified bootstrap intervals (`domainclip.evaluation.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domainclip.audit.scores import ScoreTable
from domainclip.audit.stats import (
    CONFIDENCE,
    SignFlip,
    cell_indices,
    estimate,
    images_needed,
    log_odds,
    mean_shift_test,
    min_detectable_shift,
    proportion_ci,
    sign_flip_test,
    wilcoxon_test,
)
from domainclip.evaluation.bootstrap import Estimate, recentred_interval, stratified_indices
from domainclip.evaluation.calibration import reliability_bins

MISSING = "(missing)"
TESTED, UNDERPOWERED = "tested", "underpowered"


@dataclass(frozen=True)
class Power:
    """How a cell is tested and how its power is judged.

    level: the per-cell significance level the power is computed at (alpha / m, m = the gated
    shift tests: Holm's first step, its strictest); threshold: the magnitude rule
    (max_abs_mean_shift, 0 when off); require: the shift every cell must be able to detect
    (spec `require_power`; None = not required); n_perm: random sign vectors per test;
    refine_below: combined p-values below this get 10x the sign vectors (None: never).
    """

    level: float = 0.05
    threshold: float = 0.0
    require: float | None = None
    n_perm: int = 10_000
    refine_below: float | None = None


def _clamp(e: Estimate, lo: float = -1.0, hi: float = 1.0) -> Estimate:
    """An interval of a probability shift clipped to what is possible ([-1, 1])."""
    if e.low is None:
        return e
    return Estimate(e.value, max(lo, min(hi, e.low)), max(lo, min(hi, e.high)))


@dataclass
class Cell:
    """Shift statistics of one framing vs the reference on one set of images.

    `replicates` holds the bootstrap means of the shift (kept in memory, not written); `d` and
    `flips` the per-image shifts and flip indicators; `strata` what the bootstrap stratified on.
    With these, `cell_indices(strata, B, seed, key)` regenerates the very same replicates for
    another model on the same images (model comparisons).
    """

    key: str
    n: int
    tested: bool
    mean_shift: Estimate
    median_shift: Estimate
    raw_shift: Estimate
    p_value: float | None
    wilcoxon: dict[str, Any]
    n_flips: int
    flip_rate: Estimate
    reason: str | None = None
    status: str = TESTED
    logodds_shift: Estimate | None = None
    sign_flip: SignFlip | None = None
    mds: float | None = None
    n_needed: int | None = None
    replicates: np.ndarray | None = field(default=None, repr=False)
    flips: np.ndarray | None = field(default=None, repr=False)
    d: np.ndarray | None = field(default=None, repr=False)
    strata: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "n": self.n,
            "tested": self.tested,
            "mean_shift": self.mean_shift.to_dict(),
            "median_shift": self.median_shift.to_dict(),
            "raw_similarity_shift": self.raw_shift.to_dict(),
            "p_value": self.p_value,
            "wilcoxon": self.wilcoxon,
            "flips": self.n_flips,
            "flip_rate": self.flip_rate.to_dict(),
        }
        if self.reason:
            d["reason"] = self.reason
        d["status"] = self.status
        if self.logodds_shift is not None:
            d["logodds_shift"] = self.logodds_shift.to_dict()
        if self.sign_flip is not None:
            d["sign_flip"] = self.sign_flip.to_dict()
        # math.inf (nothing detectable) is written as null with the reason
        d["min_detectable_shift"] = (
            self.mds if self.mds is not None and np.isfinite(self.mds) else None
        )
        d["images_needed"] = self.n_needed
        return d


@dataclass
class FramingComparison:
    """One framing vs the reference: the "all" cell plus per-class and per-subgroup cells."""

    framing: str
    overall: Cell
    per_class: dict[str, Cell]
    per_subgroup: dict[str, dict[str, Cell]]
    framed: Cell | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "per_class": {c: cell.to_dict() for c, cell in self.per_class.items()},
            "per_subgroup": {
                col: {v: cell.to_dict() for v, cell in cells.items()}
                for col, cells in self.per_subgroup.items()
            },
        }


def _empty(n: int) -> Estimate:
    return Estimate.undefined(f"only {n} image(s)")


def _power_status(
    key: str, d: np.ndarray, n: int, min_n: int, power: Power
) -> tuple[str, float, int | None, str | None]:
    """(status, minimum detectable shift, images needed or None, reason or None) of a cell."""
    mds = min_detectable_shift(d, power.level, power.threshold, seed=0) if n >= 2 else np.inf
    target = power.require
    need = None
    reasons = []
    if n < min_n:
        reasons.append(f"n={n} < min_cell_images={min_n}: underpowered, reported, not tested")
    if not np.isfinite(mds):
        reasons.append(f"n={n}: no shift up to 1 is detectable with 80% power")
    elif target is not None and mds > target:
        reasons.append(
            f"can only detect shifts of at least {mds:.3f} (require_power {target:g})"
        )
    if reasons:
        goal = target if target is not None else max(2 * power.threshold, 0.1)
        need = images_needed(d, power.level, power.threshold, goal, min_n)
        return UNDERPOWERED, float(mds), need, "; ".join(reasons)
    return TESTED, float(mds), None, None


def shift_cell(
    key: str,
    d: np.ndarray,
    raw_d: np.ndarray,
    flips: np.ndarray,
    strata: np.ndarray,
    n_boot: int,
    seed: int,
    min_n: int,
    detail: bool = True,
    logodds_d: np.ndarray | None = None,
    power: Power | None = None,
) -> Cell:
    """Statistics of paired shifts `d` (float [n]), raw shifts `raw_d` and `flips` (bool [n]).

    logodds_d: float [n] shifts of the target class's log-odds (default: `d` stands in).
    The gated p-value is the sign-flip test's (`stats.sign_flip_test`: mean of `d`, signed ranks
    of `logodds_d`); the mean's interval is the bootstrap-t one, clipped to [-1, 1]. Power
    (`power`): the cell's minimum detectable shift and status tested / underpowered.
    detail=False computes only what the gate reads (tests, flips, power) and leaves the median,
    raw-similarity and Wilcoxon entries undefined: for simulations and quick scans.
    """
    power = power or Power()
    lod = d if logodds_d is None else np.asarray(logodds_d, dtype=float)
    n = len(d)
    n_flips = int(np.sum(flips))
    lo, hi = proportion_ci(n_flips, n)
    flip_rate = Estimate(n_flips / n if n else 0.0, lo, hi) if n else _empty(0)
    status, mds, need, why = _power_status(key, d, n, min_n, power)
    if n < 2:
        return Cell(
            key, n, False, _empty(n), _empty(n), _empty(n), None, wilcoxon_test(d), n_flips,
            flip_rate, reason=f"n={n}: too few images for any interval; {why}",
            status=UNDERPOWERED, mds=mds, n_needed=need,
        )
    idx = cell_indices(strata, n_boot, seed, key)
    mean_shift, _, means = mean_shift_test(d, idx)
    flip = sign_flip_test(d, lod, power.n_perm, seed, key, power.refine_below)
    skipped = Estimate.undefined("not computed (detail=False)")
    return Cell(
        key=key,
        n=n,
        tested=n >= min_n,
        mean_shift=_clamp(mean_shift),
        median_shift=(
            _clamp(estimate(float(np.median(d)), np.median(d[idx], axis=1))) if detail else skipped
        ),
        raw_shift=estimate(raw_d.mean(), raw_d[idx].mean(1)) if detail else skipped,
        p_value=flip.p,
        wilcoxon=wilcoxon_test(d) if detail else {"note": "not computed (detail=False)"},
        n_flips=n_flips,
        flip_rate=flip_rate,
        reason=why,
        status=status,
        logodds_shift=estimate(lod.mean(), lod[idx].mean(1)) if detail else skipped,
        sign_flip=flip,
        mds=mds,
        n_needed=need,
        replicates=means,
        flips=flips,
        d=d,
        strata=strata,
    )


def compare_framing(
    table: ScoreTable,
    framing: str,
    reference: str,
    subgroups: Mapping[str, Sequence[str]],
    n_boot: int,
    seed: int,
    min_n: int,
    detail: bool = True,
    power: Power | None = None,
    framed_classes: Sequence[str] | None = None,
) -> FramingComparison:
    """Shifts of `framing` vs `reference`: all images, each class, each subgroup value.

    detail, power: see `shift_cell`. framed_classes: when given, also the cell of the images
    whose target class's text the framings change (`FramingComparison.framed`, for negation).
    """
    k, r = table.k(framing), table.k(reference)
    d = table.scores[k] - table.scores[r]
    lod = log_odds(table.scores[k]) - log_odds(table.scores[r])
    raw_d = table.raw[k] - table.raw[r]
    flips = table.decisions[k] != table.decisions[r]

    def cell(key: str, mask: np.ndarray) -> Cell:
        # Plain (unstratified) paired resampling in every cell: the bootstrap-t pivot uses the
        # plain standard error, which stratification would not match.
        sel = np.flatnonzero(mask)
        strata = np.zeros(len(sel), dtype=np.int64)
        return shift_cell(
            f"{framing}/{key}", d[sel], raw_d[sel], flips[sel], strata, n_boot, seed, min_n,
            detail, lod[sel], power,
        )

    everyone = np.ones(table.n, dtype=bool)
    overall = cell("all", everyone)
    per_class = {
        c: cell(f"class={c}", table.target == i)
        for i, c in enumerate(table.classes)
        if np.any(table.target == i)
    }
    per_subgroup: dict[str, dict[str, Cell]] = {}
    for col, values in subgroups.items():
        vals = np.asarray(values, dtype=object)
        per_subgroup[col] = {v: cell(f"{col}={v}", vals == v) for v in sorted(set(values))}
    framed = None
    if framed_classes is not None:
        idx = [table.classes.index(c) for c in framed_classes if c in table.classes]
        framed = cell("framed", np.isin(table.target, idx))
    return FramingComparison(framing, overall, per_class, per_subgroup, framed)


def ece_replicates(
    confidence: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int
) -> np.ndarray:
    """ECE (equal-width bins) of every bootstrap replicate at once: float [B].

    Same binning and formula as `evaluation.calibration.reliability_bins(...).ece()` (a test
    checks equality replicate by replicate); vectorised because calling it B x K times costs
    seconds. ECE = sum_b |sum of correct in b - sum of confidence in b| / N.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    n_rep, n = idx.shape
    flat = (np.arange(n_rep)[:, None] * n_bins + bin_of[idx]).ravel()
    size = n_rep * n_bins
    conf_sum = np.bincount(flat, weights=confidence[idx].ravel(), minlength=size)
    corr_sum = np.bincount(flat, weights=correct[idx].ravel(), minlength=size)
    return np.abs(corr_sum - conf_sum).reshape(n_rep, n_bins).sum(1) / n


def calibration_by_framing(
    table: ScoreTable, n_boot: int, seed: int, n_bins: int
) -> dict[str, dict[str, Estimate]]:
    """Per framing: accuracy, ECE and mean target-class score, with stratified bootstrap
    intervals (images resampled within their target class; the same replicates for every framing).
    """
    idx = stratified_indices(table.target, n_boot, seed)
    out = {}
    for k, name in enumerate(table.framings):
        conf = table.confidence[k]
        corr = table.correct[k].astype(float)
        score = table.scores[k]
        # ECE replicates are biased upward: bias-recentred interval (evaluation/bootstrap.py)
        point_ece = reliability_bins(conf, corr, n_bins, "width").ece()
        ece_reps = ece_replicates(conf, corr, idx, n_bins)
        out[name] = {
            "accuracy": estimate(corr.mean(), corr[idx].mean(1)),
            "ece": Estimate(point_ece, *recentred_interval(point_ece, ece_reps, CONFIDENCE)),
            "mean_target_score": estimate(score.mean(), score[idx].mean(1)),
        }
    return out


def point_ece_by_subgroup_and_framing(
    table: ScoreTable, subgroups: Mapping[str, Sequence[str]], n_bins: int
) -> dict[str, dict[str, dict[str, dict[str, float | int]]]]:
    """ECE and accuracy per subgroup value and framing (point values: cells are often small)."""
    out: dict[str, dict[str, dict[str, dict[str, float | int]]]] = {}
    for col, values in subgroups.items():
        vals = np.asarray(values, dtype=object)
        out[col] = {}
        for v in sorted(set(values)):
            sel = vals == v
            out[col][v] = {
                name: {
                    "n": int(sel.sum()),
                    "ece": reliability_bins(
                        table.confidence[k][sel], table.correct[k][sel].astype(float), n_bins
                    ).ece(),
                    "accuracy": float(table.correct[k][sel].mean()),
                }
                for k, name in enumerate(table.framings)
            }
    return out
