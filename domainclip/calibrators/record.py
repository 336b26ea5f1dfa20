"""The calibration record read without torch: calibrated probabilities and the referral rule.

`RUN/calibration.json` (written by `calibrators.base.save_calibration`) is also what an ONNX
export carries (`manifest.json` "calibrator"), and the ONNX Runtime predictor
(`domainclip.deploy.onnx_runtime`) must run where torch is not installed. This module is numpy
only and is the one place that applies a record without torch:

- `record_probabilities(record, logits [N, C], multi_label) -> [N, C]`: the same numbers as
  `from_record(record).probabilities(torch logits)` for every kind (temperature, bias, isotonic;
  tests/calibrators/test_record.py checks each against the torch calibrator).
- `referral_rule(record) -> dict | None`: the selective-prediction rule stored by
  `domainclip evaluate --conformal` (`{"target_error", "min_confidence", "split", "n",
  "refer_rate"}`): refer an image to a person when its confidence is below `min_confidence`.

The conformal thresholds in a record are read by `calibrators.conformal.stored_thresholds`
(torch-free as well). `CalibrationError` lives here so both stay torch-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from domainclip.errors import ConfigError

REFIT_HINT = "refit with `domainclip evaluate RUN --fit-temperature` (or `--calibrate KIND`)"
SELECTIVE_KEY = "selective"
_TIE = 1e-6  # isotonic tie-breaker and clip (calibrators.isotonic)
_CLIP = 1e-6


class CalibrationError(ConfigError):
    """A calibration record is unreadable or invalid (the message names the file)."""


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _width(record: dict[str, Any], key: str, c: int, source: str) -> np.ndarray:
    v = np.asarray(record.get(key), dtype=float)
    if v.ndim != 1 or len(v) != c:
        raise CalibrationError(
            f"{source}: the {record.get('kind')} calibrator's {key!r} has {v.size} entries but the "
            f"logits have {c} classes; score the classes it was fitted on or {REFIT_HINT}"
        )
    return v


def record_logits(record: dict[str, Any] | None, logits: np.ndarray, source: str = "calibration record") -> np.ndarray:
    """[N, C] raw logits -> [N, C] calibrated logits (float64), as `Calibrator.calibrate` does.

    None (no calibrator) returns the logits unchanged.
    """
    z = np.asarray(logits, dtype=np.float64)
    if record is None:
        return z
    kind = record.get("kind", "temperature")
    multi = record.get("mode") == "multi_label"
    if kind == "temperature":
        return z / float(record["temperature"])
    if kind == "bias":
        b = _width(record, "bias", z.shape[-1], source)
        a = _width(record, "scale", z.shape[-1], source) if multi else 1.0 / float(record["temperature"])
        return z * a + b
    if kind == "isotonic":
        xs, ys = record["x"], record["y"]
        if len(xs) != z.shape[-1]:
            raise CalibrationError(f"{source}: isotonic maps for {len(xs)} classes, logits have {z.shape[-1]}")
        u = z if multi else _softmax(z)
        raw = _sigmoid(z) if multi else u
        g = np.stack([_interp(u[..., c], xs[c], ys[c]) for c in range(len(xs))], axis=-1)
        p = _CLIP + (1 - 2 * _CLIP - _TIE) * g + _TIE * raw
        return np.log(p) - np.log1p(-p) if multi else np.log(p / p.sum(axis=-1, keepdims=True))
    raise CalibrationError(f"{source}: unknown calibrator kind {kind!r}; {REFIT_HINT}")


def _interp(x: np.ndarray, xp: list[float], fp: list[float]) -> np.ndarray:
    """np.interp clipped to the end values (`IsotonicRegression(out_of_bounds="clip")`)."""
    if len(xp) == 1:
        return np.full_like(x, float(fp[0]))
    return np.interp(x, np.asarray(xp, dtype=float), np.asarray(fp, dtype=float))


def record_probabilities(
    record: dict[str, Any] | None, logits: np.ndarray, multi_label: bool, source: str = "calibration record"
) -> np.ndarray:
    """[N, C] raw logits -> [N, C] calibrated probabilities (float64): softmax (single-label) or
    sigmoid per finding (multi-label) of `record_logits`."""
    z = record_logits(record, logits, source)
    return _sigmoid(z) if multi_label else _softmax(z)


def referral_rule(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The selective-prediction rule stored in `record` (see module doc), or None.

    Raises:
        CalibrationError: the rule is there but malformed.
    """
    rule = (record or {}).get(SELECTIVE_KEY)
    if rule is None:
        return None
    c = rule.get("min_confidence") if isinstance(rule, dict) else None
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
        raise CalibrationError(
            f"calibration record: {SELECTIVE_KEY!r} needs a finite 'min_confidence', got {rule!r}; "
            "refit it with `domainclip evaluate RUN --conformal ALPHA`"
        )
    return rule
