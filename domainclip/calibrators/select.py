"""Fit a calibrator of a named kind, or pick the kind (`auto`) by cross-validated NLL.

`auto` splits the validation data into `folds` folds (stratified by class for single-label when
every class has at least `folds` images), fits every kind on the other folds, scores the
held-out fold's NLL, and picks the kind with the lowest mean held-out NLL (ties: the simpler
kind, in the order of `KINDS`). The choice, every kind's CV NLL and the sentence saying why go
into the calibration record (`selection`). The chosen kind is then refitted on all of the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from domainclip.calibrators.base import Calibrator
from domainclip.calibrators.bias import fit_bias
from domainclip.calibrators.isotonic import fit_isotonic
from domainclip.calibrators.record import CalibrationError
from domainclip.calibrators.temperature import (
    TemperatureCalibrator,
    fit_temperature,
    nll_from_logits,
)

KINDS = ("temperature", "bias", "isotonic")  # simplest first (ties go to the simpler kind)
CHOICES = (*KINDS, "auto")


def _temperature(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> Calibrator:
    return TemperatureCalibrator(fit_temperature(logits, labels, multi_label), "fitted")


_FITTERS: dict[str, Callable[[torch.Tensor, torch.Tensor, bool], Calibrator]] = {
    "temperature": _temperature,
    "bias": fit_bias,
    "isotonic": fit_isotonic,
}


def fit_calibrator(
    kind: str, logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False
) -> Calibrator:
    """A calibrator of `kind` (one of `KINDS`) fitted on logits [N, C] and labels ([N] or [N, C])."""
    if kind not in _FITTERS:
        raise CalibrationError(f"unknown calibrator kind {kind!r}; choose one of {', '.join(CHOICES)}")
    return _FITTERS[kind](logits, labels, multi_label)


def cv_folds(labels: np.ndarray, multi_label: bool, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index arrays of `folds` folds (stratified by class for single-label when possible)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    if n < 2 * folds:
        raise CalibrationError(
            f"auto calibration needs at least {2 * folds} validation images for {folds}-fold "
            f"cross-validation, got {n}; name a kind (--calibrate temperature)"
        )
    x = np.zeros(n)
    if not multi_label and np.bincount(labels).min(initial=n) >= folds and len(set(labels.tolist())) > 1:
        counts = np.bincount(labels)
        if counts[counts > 0].min() >= folds:
            split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels)
            return [held for _, held in split]
    return [held for _, held in KFold(folds, shuffle=True, random_state=seed).split(x)]


def select_calibrator(
    logits: torch.Tensor,
    labels: torch.Tensor,
    multi_label: bool = False,
    folds: int = 5,
    seed: int = 0,
) -> tuple[Calibrator, dict[str, Any]]:
    """The kind with the lowest `folds`-fold CV NLL, refitted on all data, and why (see module doc).

    Returns:
        (calibrator, selection) with selection = {"method", "folds", "cv_nll": {kind: float,
        "none": float}, "chosen", "reason"}.
    """
    z = logits.detach().double().cpu()
    y = labels.detach().cpu()
    held_out = cv_folds(y.numpy(), multi_label, folds, seed)
    cv: dict[str, float] = {}
    for kind in ("none", *KINDS):
        losses = []
        for held in held_out:
            train = np.setdiff1d(np.arange(len(y)), held)
            zt, yt, zh, yh = z[train], y[train], z[held], y[held]
            cal = None if kind == "none" else fit_calibrator(kind, zt, yt, multi_label)
            out = zh if cal is None else cal.calibrate(zh)
            losses.append(nll_from_logits(out, yh, multi_label) * len(held))
        cv[kind] = float(sum(losses) / len(y))
    chosen = min(KINDS, key=lambda k: (round(cv[k], 12), KINDS.index(k)))
    others = ", ".join(f"{k} {cv[k]:.4f}" for k in (*KINDS, "none") if k != chosen)
    reason = (
        f"{chosen}: lowest {folds}-fold cross-validated NLL on the validation split "
        f"({cv[chosen]:.4f} vs {others})"
    )
    selection = {"method": "cv_nll", "folds": folds, "seed": seed, "cv_nll": cv, "chosen": chosen, "reason": reason}
    return fit_calibrator(chosen, z, y, multi_label), selection
