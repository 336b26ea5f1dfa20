"""Calibrators: turn a model's raw logits into probabilities a deployment can rely on.

One interface (`Calibrator.calibrate(logits [N, C]) -> logits [N, C]`) for every consumer;
`RUN/calibration.json` stores the fitted one (`save_calibration` / `load_calibrator`).
Kinds: temperature scaling, temperature + per-class bias (vector / Platt scaling), isotonic
regression; `auto` picks by cross-validated NLL (`select`). Conformal prediction sets: `conformal`.
"""

from domainclip.calibrators.base import (
    CalibrationError,
    Calibrator,
    from_record,
    load_calibration,
    load_calibrator,
    save_calibration,
)
from domainclip.calibrators.bias import BiasCalibrator, fit_bias
from domainclip.calibrators.isotonic import IsotonicCalibrator, fit_isotonic
from domainclip.calibrators.select import CHOICES, KINDS, fit_calibrator, select_calibrator
from domainclip.calibrators.temperature import (
    TemperatureCalibrator,
    apply_temperature,
    fit_temperature,
    load_temperature,
    nll_from_logits,
    temperature_at_bound,
)

__all__ = [
    "CHOICES",
    "KINDS",
    "BiasCalibrator",
    "CalibrationError",
    "Calibrator",
    "IsotonicCalibrator",
    "fit_bias",
    "fit_calibrator",
    "fit_isotonic",
    "select_calibrator",
    "TemperatureCalibrator",
    "apply_temperature",
    "fit_temperature",
    "from_record",
    "load_calibration",
    "load_calibrator",
    "load_temperature",
    "nll_from_logits",
    "save_calibration",
    "temperature_at_bound",
]
