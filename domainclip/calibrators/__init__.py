"""Calibrators: turn a model's raw logits into probabilities a deployment can rely on.

One interface (`Calibrator.calibrate(logits [N, C]) -> logits [N, C]`) for every consumer;
`RUN/calibration.json` stores the fitted one (`save_calibration` / `load_calibrator`).
Kinds: temperature scaling, temperature + per-class bias (vector / Platt scaling), isotonic
regression; `auto` picks by cross-validated NLL (`select`). Conformal prediction sets: `conformal`.
The record applied without torch (ONNX Runtime): `record`.

Names are re-exported lazily (`domainclip.lazy`) so that the torch-free modules (`record`,
`conformal`) import without torch.
"""

from __future__ import annotations

from domainclip.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CalibrationError": "record",
    "record_probabilities": "record",
    "referral_rule": "record",
    "Calibrator": "base",
    "from_record": "base",
    "load_calibration": "base",
    "load_calibrator": "base",
    "save_calibration": "base",
    "BiasCalibrator": "bias",
    "fit_bias": "bias",
    "IsotonicCalibrator": "isotonic",
    "fit_isotonic": "isotonic",
    "CHOICES": "select",
    "KINDS": "select",
    "fit_calibrator": "select",
    "select_calibrator": "select",
    "TemperatureCalibrator": "temperature",
    "apply_temperature": "temperature",
    "fit_temperature": "temperature",
    "load_temperature": "temperature",
    "nll_from_logits": "temperature",
    "temperature_at_bound": "temperature",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
