"""Model-card wording for the calibrator and the conformal prediction sets (`audit.card`).

What the card states: which calibrator is applied (any kind, via its own `describe()`) and why
`auto` chose it; for conformal sets, the guarantee (coverage >= 1 - alpha for a new image), the
coverage measured on the evaluated split, its assumption (calibration and deployment data are
exchangeable) and what breaks it (a new site, device or population); and, when the audit
measured it, the coverage under each framing with the reference framing's thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainclip.audit.report import Block, fmt_est
from domainclip.evaluation.results import EvaluationResult
from domainclip.runs.layout import RunLayout


def calibrator_sentence(cal: dict[str, Any]) -> str:
    """'<Description> (calibrator `kind`), fitted on split `val` (n images)...; <auto's reason>.'
    (a temperature reads 'Temperature T = 1.7 (calibrator `temperature`), ...')."""
    from domainclip.calibrators import CalibrationError, from_record

    try:
        what = from_record(cal, "calibration.json").describe()
    except CalibrationError:
        what = f"{cal.get('kind', 'temperature')} (record unreadable: refit it)"
    why = (cal.get("selection") or {}).get("reason")
    return (
        f"{what[:1].upper()}{what[1:]} (calibrator `{cal.get('kind', 'temperature')}`), fitted on split "
        f"`{cal.get('split', '?')}` ({cal.get('n', '?')} images) "
        "by minimising NLL; applied by evaluate, audit, predict (PyTorch and ONNX) and the dashboard"
        + (f". Chosen by `--calibrate auto`: {why}." if why else ".")
    )


def _newest_audit(run: Path) -> dict[str, Any] | None:
    """RUN/audit/*/audit.json, the newest, as JSON (None when there is none or it is unreadable)."""
    files = sorted(RunLayout(run).root.glob("audit/*/audit.json"), key=lambda p: p.stat().st_mtime)
    try:
        return json.loads(files[-1].read_text()) if files else None
    except (OSError, ValueError):
        return None


def sets_blocks(lead: EvaluationResult | None, run: Path) -> list[Block]:
    """The prediction-set guarantee, measured coverage and coverage per framing (if any)."""
    c = lead.conformal if lead is not None else None
    if not c:
        return []
    audit = _newest_audit(run)
    thr = c["thresholds"]
    unit = "a present finding is flagged" if thr["method"] == "crc_fnr" else "the true class is in the set"
    blocks: list[Block] = [("h3", "Prediction sets (conformal)"), ("p", (
        f"Guarantee: for a new image, {unit} with probability at least {c['target_coverage']:.2f} "
        f"({thr['method']}, alpha {thr['alpha']:g}, thresholds from split `{thr['split']}`, "
        f"{thr['n']} images). Measured on the {lead.data.split} split: coverage "
        f"{fmt_est(c['coverage'])}, mean set size {c['mean_set_size']:.2f}, singletons "
        f"{c['singleton_rate']:.2f}; weakest class `{c['worst_class']}`. Assumption: calibration and "
        "deployment images are exchangeable (same source and population); a new site, device, "
        "population or prompt wording breaks the guarantee, so recalibrate there."
    ))]
    cov = (audit or {}).get("coverage")
    if cov:
        rows = [[f, f"{s['coverage']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]", f"{s['mean_set_size']:.2f}"]
                for f, s in cov["per_framing"].items()]
        blocks += [("p", f"Coverage under framing shift (audit; thresholds from the `{cov['reference']}` "
                         f"framing, target {cov['target_coverage']:.2f}):"),
                   ("table", ["framing", "coverage [re-split 95% range]", "mean set size"], rows)]
    return blocks
