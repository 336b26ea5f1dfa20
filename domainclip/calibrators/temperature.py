"""Temperature scaling: one scalar T fitted on the validation split, stored in the run.

Logits are divided by T before softmax (single-label) or sigmoid (multi-label binary logits).
T > 1 softens over-confident predictions; argmax and ranking metrics (accuracy, AUROC) are
unchanged because dividing by a positive constant preserves order.

`RUN/calibration.json`::

    {"temperature": 1.7, "mode": "single_label", "split": "val", "n": 300,
     "manifest": "...", "prompts_version": "neu_det-1", "nll_before": .., "nll_after": ..,
     "ece_before": .., "ece_after": .., "n_bins": 15, "created": "2026-...Z"}
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from domainclip.calibrators.base import Calibrator, load_calibrator, positive_finite
from domainclip.errors import ConfigError

log = logging.getLogger(__name__)

# Search range of log T. exp(+-5) = 0.0067 .. 148 covers any sensible model; hitting a bound means
# the validation data cannot identify T (e.g. all predictions right at near-zero loss) and is logged.
_LOG_T_BOUNDS = (-5.0, 5.0)


def temperature_at_bound(temperature: float) -> bool:
    """Whether a fitted T lies at the search bound (exp(+-5) = 0.0067 or 148): the fitting data
    barely constrain it, so its calibration numbers must be read with that warning."""
    if not (math.isfinite(temperature) and temperature > 0):
        return False
    return min(abs(math.log(temperature) - b) for b in _LOG_T_BOUNDS) < 1e-3


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [N, C] (any shape) / T. T must be a positive finite number."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    return logits / temperature


def nll_from_logits(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> float:
    """Mean negative log-likelihood (natural log).

    Single-label: logits [N, C], labels [N] class indices -> mean cross-entropy.
    Multi-label: logits [N, C] binary logits, labels [N, C] in {0, 1} -> mean BCE over all N*C entries.
    """
    logits = logits.double()
    if multi_label:
        return float(F.binary_cross_entropy_with_logits(logits, labels.double()))
    return float(F.cross_entropy(logits, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> float:
    """The T > 0 minimising the NLL of `logits / T` on (validation) data.

    NLL is convex in 1/T (the logits scale linearly), hence unimodal in log T, so a bounded scalar
    search on log T finds the global minimum.

    Args:
        logits: [N, C] (single-label class logits or multi-label binary logits).
        labels: [N] class indices (single-label) or [N, C] 0/1 (multi-label).
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ConfigError(
            f"need [N, C] logits with N > 0 to fit a temperature, got {tuple(logits.shape)}"
        )
    z = logits.detach().double().cpu()
    y = labels.detach().cpu()

    def loss(log_t: float) -> float:
        return nll_from_logits(z / math.exp(log_t), y, multi_label)

    if _perfectly_separated(z, y, multi_label):
        # Every validation decision is already right, so the NLL keeps falling as T -> 0: the
        # "optimum" is unbounded overconfidence that the data do not support (numerically the
        # search stops wherever the loss underflows). Keep the model's own scale instead.
        log.warning(
            "the validation split is perfectly separated (every prediction correct): its NLL has no "
            "minimum in T, so no temperature is identifiable; keeping T = 1. Use a larger or harder "
            "validation split to calibrate."
        )
        return 1.0
    res = minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    log_t = float(res.x)
    if min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-3:
        log.warning(
            "fitted temperature %.4g is at the search bound: the validation data barely constrains it",
            math.exp(log_t),
        )
    return math.exp(log_t)


def _perfectly_separated(z: torch.Tensor, y: torch.Tensor, multi_label: bool) -> bool:
    """Whether every decision on (z, y) is correct (single-label argmax; multi-label sign)."""
    if multi_label:
        return bool(((z > 0).long() == y.long()).all())
    return bool((z.argmax(dim=1) == y.long()).all())


class TemperatureCalibrator(Calibrator):
    """logits / T: one positive scalar (T = 1 is the identity)."""

    kind = "temperature"

    def __init__(self, temperature: float = 1.0, source: str = "", fit: dict | None = None) -> None:
        super().__init__(source, fit)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
        self.temperature = float(temperature)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature

    def parameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0

    def describe(self) -> str:
        return f"temperature T = {self.temperature:.4g}"

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> TemperatureCalibrator:
        t = positive_finite(record.get("temperature"), "temperature", source)
        fit = {k: v for k, v in record.items() if k not in ("kind", "temperature")}
        return cls(t, source, fit)


def load_temperature(directory: str | Path | None) -> float:
    """The fitted temperature stored in `directory` (1.0 when none was fitted or it is None)."""
    cal = None if directory is None else load_calibrator(directory)
    return cal.temperature if isinstance(cal, TemperatureCalibrator) else 1.0
