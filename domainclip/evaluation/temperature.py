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

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from domainclip.errors import ConfigError

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
# Search range of log T. exp(+-5) = 0.0067 .. 148 covers any sensible model; hitting a bound means
# the validation data cannot identify T (e.g. all predictions right at near-zero loss) and is logged.
_LOG_T_BOUNDS = (-5.0, 5.0)


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


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_calibration(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `RUN/calibration.json` atomically. `record` must contain "temperature"."""
    t = record.get("temperature")
    if not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ConfigError(f"calibration record needs a positive finite 'temperature', got {t!r}")
    data = {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(run_dir) / CALIBRATION_FILE
    _atomic_write_json(path, data)
    return path


def load_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's calibration record, or None when no temperature was fitted."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}); delete it and refit with `domainclip evaluate RUN --fit-temperature`"
        ) from exc
    t = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ConfigError(
            f"{path}: 'temperature' must be a positive number, got {t!r}; refit with "
            "`domainclip evaluate RUN --fit-temperature`"
        )
    return data


def load_temperature(run_dir: str | Path | None) -> float:
    """The fitted temperature of a run (1.0 when none was fitted or `run_dir` is None)."""
    if run_dir is None:
        return 1.0
    data = load_calibration(run_dir)
    return 1.0 if data is None else float(data["temperature"])
