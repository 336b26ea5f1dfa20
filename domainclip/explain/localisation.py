"""Localisation quality of a saliency map against a ground-truth region (box or pixel mask).

- Pointing game (Zhang et al. 2016): does the map's maximum fall inside the region (optionally
  dilated by `tolerance` pixels)? With several pixels tied at the maximum, the hit is the fraction
  of tied pixels inside, i.e. the expected hit under random tie-breaking (a constant map scores
  exactly the random baseline instead of whatever pixel (0, 0) happens to be).
- Energy inside the region (Wang et al. 2020, Score-CAM's "energy-based pointing game"): the share
  of the map's positive mass that lies inside the region.

Two pointing numbers are reported: `pointing` at `tolerance` (default 0, strict) and, beside it,
`pointing_tolerant` at `pointing_tolerance` (default 15 px, the standard pointing-game tolerance
of Zhang et al.), each with its random baseline. Maps and regions are compared in the ORIGINAL
image's pixels (`explain` maps a single input's map back with `Fit.to_original`, tiled maps are
stitched back), so tolerances are original pixels whatever the fit policy and input size.

Pixels the model never saw (the ends a `crop` cut off: NaN in the map) can hold neither the
maximum nor mass, and the random baselines are taken over the seen pixels only: a finding that
was cut off scores 0 against a random baseline of 0, instead of being left out.

Random-map baseline: for a map of i.i.d. random values, the maximum is uniformly placed and the
expected share of mass inside is the region's area fraction, so both baselines equal the (dilated)
area fraction. `random_map_baseline` estimates the same empirically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from domainclip.explain.errors import ExplainError


@dataclass
class Localisation:
    """Scores of one map against one region, with their random-map baselines."""

    pointing: float  # in [0, 1]; 1 = the maximum is inside the region
    energy: float  # share of positive mass inside the region; nan if the map has none
    area: float  # area fraction of the region (= random baseline of `energy`)
    pointing_baseline: float  # area fraction of the dilated region (random baseline of pointing)
    # pointing with the standard tolerance (`pointing_tolerance` px) and its random baseline;
    # None in files written before it was reported
    pointing_tolerant: float | None = None
    pointing_tolerant_baseline: float | None = None
    tolerance_px: float | None = None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check(smap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    smap = np.asarray(smap, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if smap.shape != mask.shape or smap.ndim != 2:
        raise ExplainError(f"map {smap.shape} and mask {mask.shape} must be the same 2-D shape")
    if not mask.any():
        raise ExplainError("the region is empty: localisation needs at least one pixel inside")
    if not np.isfinite(smap).any():
        raise ExplainError("the map has no finite value: nothing of the image reached the model")
    return smap, mask


def _seen(smap: np.ndarray) -> np.ndarray:
    """Pixels the model saw (finite map values)."""
    return np.isfinite(smap)


def dilate(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within `tolerance` (Euclidean, in pixels) of the region."""
    mask = np.asarray(mask).astype(bool)
    if tolerance <= 0:
        return mask
    return distance_transform_edt(~mask) <= tolerance


def pointing_game(smap: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> float:
    """Fraction of the map's maximal pixels that fall inside the (dilated) region."""
    smap, mask = _check(smap, mask)
    seen = _seen(smap)
    top = seen & (np.where(seen, smap, -np.inf) >= np.nanmax(smap))
    return float(dilate(mask, tolerance)[top].mean())


def energy_in_mask(smap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive part of the map inside the region (nan if no positive mass)."""
    smap, mask = _check(smap, mask)
    pos = np.clip(np.nan_to_num(smap, nan=0.0), 0, None)
    total = pos.sum()
    return float(pos[mask].sum() / total) if total > 0 else math.nan


POINTING_TOLERANCE = 15.0
"""The standard pointing-game tolerance in pixels (Zhang et al. 2016), reported beside the strict one."""


def localise(
    smap: np.ndarray, mask: np.ndarray, tolerance: float = 0.0, pointing_tolerance: float = POINTING_TOLERANCE
) -> Localisation:
    """Pointing game (at `tolerance` and at `pointing_tolerance` px) and energy of one map
    [H, W] against a region [H, W], with the random-map baselines."""
    smap, mask = _check(smap, mask)
    seen = _seen(smap)
    return Localisation(
        pointing=pointing_game(smap, mask, tolerance),
        energy=energy_in_mask(smap, mask),
        area=float(mask[seen].mean()),
        pointing_baseline=float(dilate(mask, tolerance)[seen].mean()),
        pointing_tolerant=pointing_game(smap, mask, pointing_tolerance),
        pointing_tolerant_baseline=float(dilate(mask, pointing_tolerance)[seen].mean()),
        tolerance_px=float(pointing_tolerance),
    )


def random_map_baseline(
    mask: np.ndarray, n: int = 200, seed: int = 0, tolerance: float = 0.0
) -> dict[str, float]:
    """Empirical pointing and energy of `n` uniform random maps (checks the analytic baseline)."""
    mask = np.asarray(mask).astype(bool)
    rng = np.random.default_rng(seed)
    maps = rng.random((n, *mask.shape))
    return {
        "pointing": float(np.mean([pointing_game(m, mask, tolerance) for m in maps])),
        "energy": float(np.mean([energy_in_mask(m, mask) for m in maps])),
    }


def summarise(results: Sequence[Localisation]) -> dict[str, float]:
    """Means over images: map scores vs random baselines (energy means skip nan maps)."""
    if not results:
        return {"n": 0}
    energies = [r.energy for r in results if not math.isnan(r.energy)]
    pointing = float(np.mean([r.pointing for r in results]))
    p_base = float(np.mean([r.pointing_baseline for r in results]))
    energy = float(np.mean(energies)) if energies else math.nan
    e_base = float(np.mean([r.area for r in results if not math.isnan(r.energy)] or [math.nan]))
    out = {
        "n": len(results),
        "pointing": pointing,
        "pointing_random": p_base,
        "pointing_gain": pointing - p_base,
        "energy": energy,
        "energy_random": e_base,
        "energy_gain": energy - e_base,
    }
    tolerant = [r for r in results if r.pointing_tolerant is not None]
    if tolerant:
        pt = float(np.mean([r.pointing_tolerant for r in tolerant]))
        pt_base = float(np.mean([r.pointing_tolerant_baseline for r in tolerant]))
        out.update(
            pointing_tolerant=pt,
            pointing_tolerant_random=pt_base,
            pointing_tolerant_gain=pt - pt_base,
            tolerance_px=float(tolerant[0].tolerance_px or 0.0),
        )
    return out
