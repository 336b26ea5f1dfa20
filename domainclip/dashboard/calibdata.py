"""Evaluation results for the Calibration page: RUN/eval/<name>/metrics.json as tables.

No Streamlit here. The numbers are those `domainclip evaluate` wrote (read and checked as an
`EvaluationResult`); nothing is recomputed, so what the page shows is exactly what the
evaluation report says.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from domainclip.evaluation.results import (
    CALIBRATION_METRICS,
    METRICS_FILE,
    CalibrationSummary,
    TemperatureUsed,
)
from domainclip.privacy import is_shown_column

EVAL_DIR = "eval"
EVAL_METRICS = METRICS_FILE
METRIC_LABELS = {
    "ece": "ECE (equal-width bins)",
    "ece_mass": "ECE (equal-mass bins)",
    "mce": "MCE (max bin gap)",
    "brier": "Brier score",
    "nll": "NLL (nats)",
}


def evaluation_names(run_dir: Path) -> list[str]:
    """Names of the evaluations of a run (folders RUN/eval/<name> with a metrics.json)."""
    root = run_dir / EVAL_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / EVAL_METRICS).is_file())


def fmt_estimate(est: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.912 [0.871, 0.945]' from an Estimate dict; 'undefined (reason)'; '' for None."""
    if est is None:
        return ""
    if est.get("value") is None:
        return f"undefined ({est.get('reason', 'no value')})"
    ci = est.get("ci95")

    def num(x: float) -> str:
        # round first, then add 0.0: tiny negatives print as 0.0000, not -0.0000
        return f"{round(float(x), digits) + 0.0:.{digits}f}"

    if not ci:
        return num(est["value"])
    return f"{num(est['value'])} [{num(ci[0])}, {num(ci[1])}]"


def calibration_table(calib: CalibrationSummary) -> pd.DataFrame:
    """Metric, before, after (value [95% CI]) for ECE, MCE, Brier and NLL."""
    before, after = calib.before, calib.after
    return pd.DataFrame(
        [
            {
                "metric": METRIC_LABELS[m],
                "before temperature scaling": fmt_estimate(before[m]),
                "after temperature scaling": fmt_estimate(after[m]) if after else "not fitted",
            }
            for m in CALIBRATION_METRICS
        ]
    )


def reliability_frame(calib: CalibrationSummary, strategy: str = "width") -> pd.DataFrame:
    """Per-bin rows for the reliability diagrams and confidence histograms.

    Columns: when ("before" / "after"), bin (1-based), lower, upper, mid, count, confidence
    (mean confidence in the bin), accuracy (fraction correct), gap (accuracy - confidence).
    Empty bins are dropped.
    """
    rows = []
    for when, rep in (("before", calib.before), ("after", calib.after)):
        if not rep:
            continue
        bins = rep[f"bins_{strategy}"]
        for i, n in enumerate(bins["count"]):
            if not n:
                continue
            lo, hi = bins["lower"][i], bins["upper"][i]
            conf, acc = bins["confidence"][i], bins["accuracy"][i]
            rows.append(
                {
                    "when": when,
                    "bin": i + 1,
                    "lower": lo,
                    "upper": hi,
                    "mid": (lo + hi) / 2,
                    "count": int(n),
                    "confidence": conf,
                    "accuracy": acc,
                    "gap": acc - conf,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["when", "bin", "lower", "upper", "mid", "count", "confidence", "accuracy", "gap"],
    )


def hidden_subgroup_columns(calib: CalibrationSummary, allowed: Iterable[str] = ()) -> list[str]:
    """Subgroup columns of the evaluation withheld from display (names only)."""
    return [c for c in calib.subgroups if not is_shown_column(c, allowed)]


def subgroup_frame(calib: CalibrationSummary, allowed: Iterable[str] = ()) -> pd.DataFrame:
    """ECE per subgroup (after temperature scaling, as evaluate computes it).

    Columns: column, value, n, ece, ci_low, ci_high, ece (95% CI) text, accuracy, mean confidence.
    Subgroup columns neither on the safe list nor in `allowed` (`privacy.is_shown_column`) are
    left out: their values could be patient names or ids.
    """
    rows = []
    for column, groups in calib.subgroups.items():
        if not is_shown_column(column, allowed):
            continue
        for value, rec in groups.items():
            ece = rec["ece"]
            ci = ece.get("ci95") or [None, None]
            rows.append(
                {
                    "column": column,
                    "value": value,
                    "n": rec["n"],
                    "ece": ece.get("value"),
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "ECE [95% CI]": fmt_estimate(ece),
                    "accuracy": rec["accuracy"],
                    "mean confidence": rec["mean_confidence"],
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "column",
            "value",
            "n",
            "ece",
            "ci_low",
            "ci_high",
            "ECE [95% CI]",
            "accuracy",
            "mean confidence",
        ],
    )


def calibrator_facts(temp: TemperatureUsed) -> dict[str, str]:
    """The calibrator in force: kind, one-line description, and why it was chosen (`auto`'s
    cross-validated NLL sentence, or where it came from)."""
    fit = temp.fit or {}
    why = (fit.get("selection") or {}).get("reason") or temp.source
    return {"kind": temp.kind or "temperature", "description": temp.describe(), "why": why}


def conformal_frame(conformal: dict[str, Any]) -> pd.DataFrame:
    """Coverage per class / finding (n, coverage [95% CI]) of metrics.json's `conformal` block,
    with an "all" row first."""
    rows = [{"class": "all", "n": sum(v["n"] for v in conformal["per_class"].values()),
             "coverage": fmt_estimate(conformal["coverage"])}]
    rows += [{"class": c, "n": v["n"], "coverage": fmt_estimate(v["coverage"])}
             for c, v in conformal["per_class"].items()]
    return pd.DataFrame(rows, columns=["class", "n", "coverage"])
