"""The calibrator interface: raw logits in, calibrated logits out, the same for every consumer.

Every command that turns logits into probabilities (evaluate, audit, explain's probability score,
the dashboard, the card, later predict) applies the run's calibrator through this interface, so a
new kind is one new subclass and one entry in `from_record`'s table (kinds: temperature,
bias, isotonic; `calibrators.select` fits them and picks one by cross-validated NLL).

Logits are [N, C]: single-label class logits (softmax over C) or multi-label binary logits
(sigmoid per column). `calibrate` is a torch function of the logits (differentiable where the
kind allows), because Captum's forward functions score through it.

`RUN/calibration.json` holds `to_record()`: `{"kind": ..., <parameters>, <what it was fitted
on>}`. Records without "kind" were written before kinds existed and are temperature records.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from domainclip.calibrators.record import REFIT_HINT, CalibrationError
from domainclip.errors import ConfigError
from domainclip.io import atomic_write_json, read_json
from domainclip.runs.layout import CALIBRATION_FILE


class Calibrator(ABC):
    """Logits [N, C] -> calibrated logits [N, C].

    Attributes:
        source: where it came from, for reports ("given", a file path, "none fitted ...").
        fit: what it was fitted on (split, n, manifest, prompt-set version, NLL/ECE before and
            after...); empty when it was not fitted.
    """

    kind: ClassVar[str]

    def __init__(self, source: str = "", fit: dict[str, Any] | None = None) -> None:
        self.source = source
        self.fit = dict(fit or {})

    @abstractmethod
    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, C] raw logits -> [N, C] calibrated logits (same dtype and device)."""

    @abstractmethod
    def parameters(self) -> dict[str, Any]:
        """The fitted parameters as JSON values (e.g. {"temperature": 1.7})."""

    @property
    def is_identity(self) -> bool:
        """True when calibrating changes nothing (no calibrator fitted or T = 1)."""
        return False

    def describe(self) -> str:
        """One line for reports, e.g. 'temperature T = 0.29'."""
        return f"{self.kind} {self.parameters()}"

    def check_classes(self, classes: list[str]) -> None:
        """Refuse to apply a per-class calibrator to other classes (or another order) than it
        was fitted on (its record's "classes"); a temperature applies to any class set."""
        fitted = self.fit.get("classes")
        if self.kind != "temperature" and fitted is not None and list(fitted) != list(classes):
            raise CalibrationError(
                f"{self.source or 'the calibrator'}: the {self.kind} calibrator was fitted on classes "
                f"{fitted} but is applied to {list(classes)}; score the same classes in the same order "
                "or refit it (--calibrate KIND)"
            )

    def probabilities(self, logits: torch.Tensor, multi_label: bool) -> np.ndarray:
        """[N, C] raw logits -> [N, C] calibrated probabilities (float64 numpy).

        Single-label: softmax over classes; multi-label: sigmoid per (image, finding).
        """
        z = self.calibrate(logits.detach().double().cpu())
        p = torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)
        return p.numpy()

    def to_record(self) -> dict[str, Any]:
        """The JSON record stored in RUN/calibration.json."""
        return {"kind": self.kind, **self.parameters(), **self.fit}


def save_calibration(directory: str | Path, record: dict[str, Any] | Calibrator) -> Path:
    """Write `directory/calibration.json` atomically (validated first; a creation time is added)."""
    if isinstance(record, Calibrator):
        record = record.to_record()
    from_record(record, "calibration record")  # refuse what could not be read back
    path = Path(directory) / CALIBRATION_FILE
    data = {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return atomic_write_json(path, data)


def load_calibration(directory: str | Path) -> dict[str, Any] | None:
    """`directory/calibration.json` as a validated record, or None when there is none."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path, "calibration record")
    except ConfigError as exc:
        raise CalibrationError(f"{exc}; delete it and {REFIT_HINT}") from exc
    from_record(data, str(path))
    return data


def load_calibrator(directory: str | Path) -> Calibrator | None:
    """The calibrator stored in `directory/calibration.json`, or None when there is none."""
    record = load_calibration(directory)
    if record is None:
        return None
    return from_record(record, str(Path(directory) / CALIBRATION_FILE))


def from_record(record: Any, source: str) -> Calibrator:
    """Rebuild a calibrator from its JSON record (raises CalibrationError naming `source`)."""
    from domainclip.calibrators.bias import BiasCalibrator
    from domainclip.calibrators.isotonic import IsotonicCalibrator
    from domainclip.calibrators.temperature import TemperatureCalibrator

    kinds: dict[str, type[Calibrator]] = {
        k.kind: k for k in (TemperatureCalibrator, BiasCalibrator, IsotonicCalibrator)
    }
    if not isinstance(record, dict):
        raise CalibrationError(f"{source}: expected a JSON object; {REFIT_HINT}")
    kind = record.get("kind", TemperatureCalibrator.kind)
    if kind not in kinds:
        raise CalibrationError(
            f"{source}: unknown calibrator kind {kind!r} (known: {sorted(kinds)}); it may have been "
            f"written by a newer domainclip; {REFIT_HINT}"
        )
    return kinds[kind].from_record(record, source)


def positive_finite(value: Any, name: str, source: str) -> float:
    """`value` as a positive finite float, else CalibrationError naming `source` and `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationError(f"{source}: {name!r} must be a positive number, got {value!r}; {REFIT_HINT}")
    if not (math.isfinite(value) and value > 0):
        raise CalibrationError(f"{source}: {name!r} must be a positive number, got {value!r}; {REFIT_HINT}")
    return float(value)
