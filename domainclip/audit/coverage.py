"""Coverage under framing shift: does the conformal guarantee survive a differently worded prompt?

Conformal prediction sets (`calibrators.conformal`, LAC) are calibrated on the scores of the
reference framing and then applied, unchanged, to every framing's scores. Under exchangeable data
the reference framing covers the true class with probability >= 1 - alpha; a framing that moves
the scores (an alarming wording, a synonym) can lose that coverage, and nothing in the guarantee
warns about it.

Computed on the audited images by repeated split conformal: `n_splits` random halves (seeded with
the spec's `statistics.seed`); thresholds from the reference framing's probabilities of one half;
coverage (the image's target class in its set) and set size on the other half under every
framing. Reported per framing: mean coverage over the re-splits with the 2.5/97.5 percentiles of
the re-split coverages (`ci95`: the variability of a single calibration of this size, not a
binomial interval), mean set size, and the drop vs the reference; per subgroup value with at least
`min_cell_images` images, the same coverage per framing.

Gate (`coverage_checks`, off unless the spec sets `thresholds.max_coverage_drop`): every invariant
framing other than the reference needs mean coverage >= 1 - coverage_alpha - max_coverage_drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from domainclip.audit.gate import FAIL, PASS, Check
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import AuditSpec
from domainclip.calibrators.conformal import fit_conformal

N_SPLITS = 100
METHOD = "lac"


def _splits(n: int, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` random (calibration, evaluation) halves of range(n)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        out.append((perm[: n // 2], perm[n // 2 :]))
    return out


def _summary(cov: list[float], size: list[float]) -> dict[str, Any]:
    c = np.asarray(cov, dtype=float)
    return {
        "coverage": float(c.mean()),
        "ci95": [float(np.percentile(c, 2.5)), float(np.percentile(c, 97.5))],
        "mean_set_size": float(np.mean(size)),
    }


def framing_coverage(
    spec: AuditSpec,
    table: ScoreTable,
    subgroups: Mapping[str, list[str]] | None = None,
    n_splits: int = N_SPLITS,
) -> dict[str, Any] | None:
    """Coverage and set size per framing (and per subgroup value) of conformal sets calibrated
    under the reference framing (see module doc); None when there are fewer than 4 images.

    table.probs: [K, N, C] calibrated probabilities; table.target: [N] target class index.
    """
    alpha = spec.thresholds.coverage_alpha
    n = table.n
    if n < 4:
        return None
    r = table.k(spec.reference)
    y = table.target
    hit = {f: [] for f in table.framings}
    size = {f: [] for f in table.framings}
    cells = _subgroup_cells(subgroups or {}, spec.statistics.min_cell_images)
    sub_hit: dict[tuple[str, str], dict[str, list[float]]] = {c: {f: [] for f in table.framings} for c in cells}
    for cal, ev in _splits(n, n_splits, spec.statistics.seed):
        thr = fit_conformal(table.probs[r, cal], y[cal], alpha, METHOD, split="audited images (half)")
        for k, f in enumerate(table.framings):
            sets = thr.predict_sets(table.probs[k, ev])
            covered = sets[np.arange(len(ev)), y[ev]]
            hit[f].append(float(covered.mean()))
            size[f].append(float(sets.sum(1).mean()))
            for cell, mask in cells.items():
                m = mask[ev]
                if m.any():
                    sub_hit[cell][f].append(float(covered[m].mean()))
    per_framing = {f: _summary(hit[f], size[f]) for f in table.framings}
    ref_cov = per_framing[spec.reference]["coverage"]
    for s in per_framing.values():
        s["drop_vs_reference"] = ref_cov - s["coverage"]
    per_subgroup: dict[str, dict[str, Any]] = {}
    for (col, value), by_f in sub_hit.items():
        per_subgroup.setdefault(col, {})[value] = {
            "n": int(cells[(col, value)].sum()),
            **{f: float(np.mean(v)) for f, v in by_f.items() if v},
        }
    return {
        "method": f"split conformal ({METHOD}), thresholds from the reference framing",
        "alpha": alpha,
        "target_coverage": 1 - alpha,
        "reference": spec.reference,
        "n_images": n,
        "n_splits": n_splits,
        "calibration_size": n // 2,
        "per_framing": per_framing,
        "per_subgroup": per_subgroup,
    }


def _subgroup_cells(subgroups: Mapping[str, list[str]], min_images: int) -> dict[tuple[str, str], np.ndarray]:
    """(column, value) -> bool [N] mask, for values with at least `min_images` images."""
    out = {}
    for col, values in subgroups.items():
        arr = np.asarray(values, dtype=object)
        for v in sorted(set(values)):
            mask = arr == v
            if mask.sum() >= min_images:
                out[(col, str(v))] = mask
    return out


def coverage_checks(spec: AuditSpec, coverage: dict[str, Any] | None) -> list[Check]:
    """One gate check per invariant framing (other than the reference): mean coverage >=
    1 - alpha - max_coverage_drop. None when the spec leaves `max_coverage_drop` unset."""
    drop = spec.thresholds.max_coverage_drop
    if drop is None or coverage is None:
        return []
    floor = coverage["target_coverage"] - drop
    out = []
    for f in spec.framings:
        if not f.gated or f.name == spec.reference:
            continue
        s = coverage["per_framing"][f.name]
        ok = s["coverage"] >= floor - 1e-12
        msg = (
            f"{f.name}: conformal coverage {s['coverage']:.3f} with the reference framing's thresholds "
            f"(target {coverage['target_coverage']:.2f}, reference {coverage['per_framing'][spec.reference]['coverage']:.3f})"
            + (f" is below the floor {floor:.3f}: the coverage guarantee does not survive this wording"
               if not ok else f" >= {floor:.3f}")
        )
        out.append(Check(f"coverage/{f.name}", "coverage", f.name, "all", s["coverage"], floor,
                         PASS if ok else FAIL, msg, s["ci95"]))
    return out
