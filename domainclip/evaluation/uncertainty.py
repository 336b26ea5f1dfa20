"""Fitting a calibrator and conformal thresholds for `evaluate` on held-out (never test) data.

The calibrator is fitted on `--val-split` (default val). Conformal thresholds are computed on the
manifest's `calib` split when it has one (data used for nothing else), else on the validation
split, from the probabilities of the calibrator in force; the record says which. Neither is ever
fitted on the test split (`check_not_test`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from domainclip.calibrators import (
    Calibrator,
    fit_calibrator,
    nll_from_logits,
    select_calibrator,
)
from domainclip.calibrators.conformal import ConformalThresholds, fit_conformal
from domainclip.calibrators.record import CalibrationError
from domainclip.calibrators.select import KINDS, cv_folds
from domainclip.datasets.manifest import Manifest, normalize_split
from domainclip.errors import ConfigError
from domainclip.evaluation.calibration import expected_calibration_error
from domainclip.evaluation.embed import embed_split
from domainclip.evaluation.task import ZeroShotTask, build_targets, probabilities
from domainclip.runs import ResolvedModel

CALIB_SPLIT = "calib"


@dataclass
class SplitScores:
    """Raw logits [n, C] and labels ([n] or [n, C]) of one held-out split."""

    split: str
    logits: torch.Tensor
    y: np.ndarray

    @property
    def n(self) -> int:
        return len(self.y)


def check_not_test(split: str, what: str) -> None:
    """Refuse to fit `what` on the test split (its numbers would no longer be held out)."""
    if normalize_split(split) == "test":
        raise ConfigError(
            f"{what} must not be fitted on the test split ({split!r}): the test numbers would no "
            "longer be held out. Use --val-split val (or add a `calib` split to the manifest)"
        )


def split_scores(
    resolved: ResolvedModel, man: Manifest, task: ZeroShotTask, split: str, skip_uncovered: bool
) -> SplitScores:
    """Embed and score `split` (logits [n, C] before calibration)."""
    bb = resolved.backbone
    emb = embed_split(bb, man, split, transform=resolved.preprocess)
    tgt = build_targets(emb.rows, task.classes, task.ps, skip_uncovered=skip_uncovered)
    return SplitScores(split, emb.scores(lambda f: task.logits(bb, f), tgt.keep), np.asarray(tgt.y))


def conformal_split(man: Manifest, val_split: str) -> str:
    """`calib` when the manifest has rows in it, else the validation split."""
    return CALIB_SPLIT if any(r.split == CALIB_SPLIT for r in man.rows) else val_split


def fit_record(
    kind: str, val: SplitScores, task: ZeroShotTask, man: Manifest, n_bins: int
) -> tuple[Calibrator, dict[str, Any]]:
    """Fit `kind` (or `auto`) on `val`; returns (calibrator, its record: kind, parameters, data)."""
    check_not_test(val.split, "a calibrator")
    multi = task.ps.multi_label
    y = torch.as_tensor(val.y)
    selection = None
    if kind == "auto":
        cal, selection = select_calibrator(val.logits, y, multi)
    else:
        cal = fit_calibrator(kind, val.logits, y, multi)
    z1 = cal.calibrate(val.logits.double())
    p0, p1 = probabilities(val.logits, multi), cal.probabilities(val.logits, multi)
    cal.fit = {
        "mode": task.ps.mode,
        "split": val.split,
        "n": val.n,
        "manifest": str(man.path),
        "prompts": task.ps.source,
        "prompts_version": task.ps.version,
        "classes": task.classes,
        "nll_before": nll_from_logits(val.logits, y, multi),
        "nll_after": nll_from_logits(z1, y, multi),
        "ece_before": expected_calibration_error(p0, val.y, n_bins, multi_label=multi),
        "ece_after": expected_calibration_error(p1, val.y, n_bins, multi_label=multi),
        "n_bins": n_bins,
        **({"selection": selection} if selection else {}),
    }
    return cal, cal.to_record()


CROSSFIT_FOLDS = 5  # folds of the out-of-fold probabilities when the calibrator saw the calib split


def held_out_probabilities(cal: Calibrator, calib: SplitScores, multi: bool, seed: int = 0) -> tuple[np.ndarray, int]:
    """Probabilities [n, C] of `calib` that `cal`'s fit did not see, and the folds used (0: none).

    When `cal` was fitted on this very split, its probabilities there are optimistic (an isotonic
    map puts many of them at exactly 1.0), and a conformal threshold or referral cut taken from
    them is too tight on new data: coverage fell to 0.72 at a 0.90 target on the demo. Then the
    same kind is refitted on 4 of 5 folds and applied to the fifth (cross-fitting), so every
    image's probability comes from a calibrator that did not see it. The stored calibrator stays
    the one fitted on the whole split; the guarantee becomes approximate (the thresholds come from
    5 slightly different calibrators), which the record says; a `calib` split makes it exact.
    """
    same = normalize_split(str(cal.fit.get("split", ""))) == normalize_split(calib.split)
    if not same or cal.is_identity or cal.kind not in KINDS:
        return cal.probabilities(calib.logits, multi), 0
    try:
        folds = cv_folds(np.asarray(calib.y), multi, CROSSFIT_FOLDS, seed)
    except CalibrationError:  # too few images to cross-fit: the in-sample ones, with the warning
        return cal.probabilities(calib.logits, multi), 0
    y = torch.as_tensor(calib.y)
    out = np.empty(tuple(calib.logits.shape), dtype=float)
    for held in folds:
        train = np.setdiff1d(np.arange(calib.n), held)
        part = fit_calibrator(cal.kind, calib.logits[train], y[train], multi)
        out[held] = part.probabilities(calib.logits[held], multi)
    return out, len(folds)


def fit_thresholds(
    probs: np.ndarray,
    calib: SplitScores,
    alpha: float,
    method: str,
    mondrian: bool,
    multi: bool,
    **options: Any,
) -> ConformalThresholds:
    """Conformal thresholds from `calib`'s calibrated probabilities [n, C] (never the test split;
    see `held_out_probabilities`). options: randomized, seed, cross_fitted
    (`calibrators.conformal.fit_conformal`)."""
    check_not_test(calib.split, "conformal thresholds")
    return fit_conformal(probs, calib.y, alpha, method, mondrian, multi, split=calib.split, **options)
