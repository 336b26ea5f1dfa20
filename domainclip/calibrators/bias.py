"""Temperature + per-class bias: vector scaling (single-label) / per-finding Platt scaling (multi-label).

Single-label: calibrated logits z / T + b with one T > 0 and a bias b_c per class (vector scaling
with a shared scale). The bias moves probability mass between classes, which one temperature
cannot; argmax may change (that is the point: a class the model over-predicts is pulled down).

Multi-label: a_c * z_c + b_c per finding with a_c > 0 (Platt scaling of each finding's binary
logit). The map is strictly increasing per finding, so every per-finding AUROC is unchanged; the
bias removes a base-rate offset (e.g. mean probability 0.48 against a 7.5 % positive rate).

Fitted by minimising the validation NLL (L-BFGS in float64) with a tiny L2 penalty (1e-4) on
log-scales and biases, which makes the single-label bias unique (softmax ignores a shared shift)
and keeps parameters finite on perfectly separated data.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from domainclip.calibrators.base import Calibrator, positive_finite
from domainclip.calibrators.record import REFIT_HINT, CalibrationError

_L2 = 1e-4


def _vector(record: dict[str, Any], key: str, source: str) -> list[float]:
    """record[key] as a non-empty list of finite floats, else CalibrationError naming `source`."""
    v = record.get(key)
    if (
        not isinstance(v, list)
        or not v
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        or not all(math.isfinite(x) for x in v)
    ):
        raise CalibrationError(f"{source}: {key!r} must be a list of finite numbers; {REFIT_HINT}")
    return [float(x) for x in v]


def check_width(logits: torch.Tensor, n: int, kind: str) -> None:
    """Refuse logits whose last dimension is not the calibrator's number of classes."""
    if logits.shape[-1] != n:
        raise CalibrationError(
            f"the {kind} calibrator was fitted on {n} classes but got logits with "
            f"{logits.shape[-1]}; score the classes it was fitted on (same order) or refit it"
        )


class BiasCalibrator(Calibrator):
    """Single-label: z / T + b; multi-label: a * z + b (a > 0). All vectors have length C."""

    kind = "bias"

    def __init__(
        self,
        scale: list[float],
        bias: list[float],
        multi_label: bool,
        source: str = "",
        fit: dict | None = None,
    ) -> None:
        super().__init__(source, fit)
        if len(scale) != len(bias) or any(not (s > 0 and math.isfinite(s)) for s in scale):
            raise CalibrationError(f"bias calibrator needs C positive scales and C biases ({source})")
        if not multi_label and len(set(scale)) != 1:
            raise CalibrationError(f"single-label bias calibrator shares one temperature ({source})")
        self.scale = [float(s) for s in scale]
        self.bias = [float(b) for b in bias]
        self.multi_label = bool(multi_label)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        check_width(logits, len(self.bias), self.kind)
        a = torch.tensor(self.scale, dtype=logits.dtype, device=logits.device)
        b = torch.tensor(self.bias, dtype=logits.dtype, device=logits.device)
        return logits * a + b

    def parameters(self) -> dict[str, Any]:
        if self.multi_label:
            return {"mode": "multi_label", "scale": self.scale, "bias": self.bias}
        return {"mode": "single_label", "temperature": 1.0 / self.scale[0], "bias": self.bias}

    @property
    def is_identity(self) -> bool:
        return all(s == 1.0 for s in self.scale) and all(b == 0.0 for b in self.bias)

    def describe(self) -> str:
        bias = ", ".join(f"{b:+.3g}" for b in self.bias)
        if self.multi_label:
            scale = ", ".join(f"{s:.3g}" for s in self.scale)
            return f"per-finding Platt scaling (scale [{scale}], bias [{bias}])"
        return f"temperature T = {1.0 / self.scale[0]:.4g} + per-class bias [{bias}]"

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> BiasCalibrator:
        mode = record.get("mode")
        if mode not in ("single_label", "multi_label"):
            raise CalibrationError(f"{source}: bias record needs mode single_label|multi_label; {REFIT_HINT}")
        bias = _vector(record, "bias", source)
        if mode == "multi_label":
            scale = _vector(record, "scale", source)
            keys = ("kind", "scale", "bias")
        else:
            scale = [1.0 / positive_finite(record.get("temperature"), "temperature", source)] * len(bias)
            keys = ("kind", "temperature", "bias")
        if len(scale) != len(bias):
            raise CalibrationError(f"{source}: 'scale' and 'bias' differ in length; {REFIT_HINT}")
        fit = {k: v for k, v in record.items() if k not in keys}
        return cls(scale, bias, mode == "multi_label", source, fit)


def fit_bias(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> BiasCalibrator:
    """Fit the bias calibrator by penalised NLL (see module doc).

    Args:
        logits: [N, C] raw logits (class logits or multi-label binary logits).
        labels: [N] class indices (single-label) or [N, C] in {0, 1} (multi-label).
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise CalibrationError(f"need [N, C] logits with N > 0 to fit a bias, got {tuple(logits.shape)}")
    z = logits.detach().double().cpu()
    y = labels.detach().cpu()
    c = z.shape[1]
    log_a = torch.zeros(c if multi_label else 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = z * torch.exp(log_a) + b
        if multi_label:
            loss = F.binary_cross_entropy_with_logits(out, y.double())
        else:
            loss = F.cross_entropy(out, y.long())
        loss = loss + _L2 * (log_a.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    a = torch.exp(log_a.detach()).tolist()
    scale = a if multi_label else a * c
    return BiasCalibrator(scale, b.detach().tolist(), multi_label, "fitted")
