"""Calibrators: turn a model's raw logits into probabilities a deployment can rely on.

One interface (`Calibrator.calibrate(logits [N, C]) -> logits [N, C]`) for every consumer;
`RUN/calibration.json` stores the fitted one (`save_calibration` / `load_calibrator`).
Kinds today: temperature scaling.
"""

from domainclip.calibrators.base import (
    CalibrationError,
    Calibrator,
    from_record,
    load_calibration,
    load_calibrator,
    save_calibration,
)
from domainclip.calibrators.temperature import (
    TemperatureCalibrator,
    apply_temperature,
    fit_temperature,
    load_temperature,
    nll_from_logits,
    temperature_at_bound,
)

__all__ = [
    "CalibrationError",
    "Calibrator",
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
