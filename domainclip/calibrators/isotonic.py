"""Isotonic regression per class / finding (scikit-learn `IsotonicRegression`), non-parametric.

Multi-label: for each finding c, a non-decreasing map g_c(z_c) of the raw binary logit fitted to
whether the finding is present. Single-label: g_c(p_c) of the raw softmax probability of class c
against 1[y = c] (one-vs-rest), then renormalised over classes.

The fitted maps are stored as their breakpoints (sklearn's `X_thresholds_`, `y_thresholds_`) and
applied by linear interpolation, clipped outside the fitted range (exactly
`IsotonicRegression(out_of_bounds="clip").predict`). Isotonic maps are flat between breakpoints,
which would create ties and lower AUROC; a tie-breaker of 1e-6 x the raw probability keeps each
finding's map strictly increasing, so per-finding ranking (and AUROC) is unchanged:
p = 1e-6 + (1 - 3e-6) g(u) + 1e-6 raw, which also keeps p inside [1e-6, 1 - 1e-6].

`calibrate` returns logits: logit(p) for multi-label, log(p) for single-label (softmax of which
gives the renormalised p back).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from domainclip.calibrators.base import Calibrator
from domainclip.calibrators.bias import check_width
from domainclip.calibrators.record import REFIT_HINT, CalibrationError

_TIE = 1e-6
_CLIP = 1e-6


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp in torch: x [...] at breakpoints xp [K] (increasing) with values fp [K]."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


class IsotonicCalibrator(Calibrator):
    """One isotonic map per class (x: breakpoints, y: fitted values; lists of length C)."""

    kind = "isotonic"

    def __init__(
        self,
        x: list[list[float]],
        y: list[list[float]],
        multi_label: bool,
        source: str = "",
        fit: dict | None = None,
    ) -> None:
        super().__init__(source, fit)
        if len(x) != len(y) or any(len(a) != len(b) or not a for a, b in zip(x, y, strict=True)):
            raise CalibrationError(f"{source}: isotonic breakpoints and values differ in length; {REFIT_HINT}")
        self.x = [[float(v) for v in a] for a in x]
        self.y = [[float(v) for v in a] for a in y]
        self.multi_label = bool(multi_label)

    def _inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.multi_label else torch.softmax(logits, dim=-1)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        check_width(logits, len(self.x), self.kind)
        u = self._inputs(logits)
        raw = torch.sigmoid(logits) if self.multi_label else u
        cols = []
        for c in range(len(self.x)):
            xp = torch.tensor(self.x[c], dtype=u.dtype, device=u.device)
            fp = torch.tensor(self.y[c], dtype=u.dtype, device=u.device)
            cols.append(interpolate(u[..., c], xp, fp))
        # p in [CLIP, 1 - CLIP], strictly increasing in the raw score (tie-breaker)
        p = _CLIP + (1 - 2 * _CLIP - _TIE) * torch.stack(cols, dim=-1) + _TIE * raw
        if self.multi_label:
            return torch.log(p) - torch.log1p(-p)
        return torch.log(p / p.sum(dim=-1, keepdim=True))

    def parameters(self) -> dict[str, Any]:
        return {"mode": "multi_label" if self.multi_label else "single_label", "x": self.x, "y": self.y}

    def describe(self) -> str:
        n = sum(len(a) for a in self.x)
        what = "finding" if self.multi_label else "class"
        return f"isotonic regression per {what} ({len(self.x)} maps, {n} breakpoints)"

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> IsotonicCalibrator:
        mode = record.get("mode")
        x, y = record.get("x"), record.get("y")
        ok = (
            mode in ("single_label", "multi_label")
            and isinstance(x, list)
            and isinstance(y, list)
            and all(isinstance(a, list) for a in (*x, *y))
        )
        if not ok:
            raise CalibrationError(
                f"{source}: isotonic record needs mode and lists of breakpoints 'x' and values 'y'; "
                f"{REFIT_HINT}"
            )
        fit = {k: v for k, v in record.items() if k not in ("kind", "x", "y")}
        return cls(x, y, mode == "multi_label", source, fit)


def fit_isotonic(
    logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False
) -> IsotonicCalibrator:
    """Fit one `IsotonicRegression` per class/finding (see module doc).

    Args:
        logits: [N, C] raw logits; labels: [N] class indices or [N, C] in {0, 1}.
    """
    from sklearn.isotonic import IsotonicRegression

    if logits.ndim != 2 or logits.shape[0] == 0:
        raise CalibrationError(f"need [N, C] logits with N > 0 to fit isotonic maps, got {tuple(logits.shape)}")
    z = logits.detach().double().cpu()
    u = (z if multi_label else torch.softmax(z, dim=-1)).numpy()
    y = labels.detach().cpu().numpy()
    target = y.astype(float) if multi_label else (y[:, None] == np.arange(z.shape[1])[None, :]).astype(float)
    xs, ys = [], []
    for c in range(z.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(u[:, c], target[:, c])
        xs.append(iso.X_thresholds_.tolist())
        ys.append(iso.y_thresholds_.tolist())
    return IsotonicCalibrator(xs, ys, multi_label, "fitted")
