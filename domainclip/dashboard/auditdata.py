"""Framing-audit results for the Framing audit page: RUN/audit/<spec>/audit.json and scores.csv.

No Streamlit here. Every number comes from the files `domainclip audit` wrote (audit.json read
and checked as an `AuditReport`); the per-image score shifts are recomputed only by subtracting
two columns of its scores.csv.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from domainclip.audit.report import SIDE_BY_SIDE_HEADER, cell_power, side_by_side_rows
from domainclip.audit.results import AUDIT_FILE, AuditReport
from domainclip.dashboard.calibdata import fmt_estimate
from domainclip.privacy import is_shown_column

AUDIT_DIR = "audit"
AUDIT_JSON = AUDIT_FILE
SCORES_CSV = "scores.csv"


def audit_names(run_dir: Path) -> list[str]:
    """Audits of a run: folders RUN/audit/<name> holding an audit.json."""
    root = run_dir / AUDIT_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / AUDIT_JSON).is_file())


def _ci(est: dict[str, Any] | None) -> tuple[float | None, float | None]:
    ci = (est or {}).get("ci95") or [None, None]
    lo, hi = ci
    # NaN or infinite bounds (a degenerate bootstrap) cannot be drawn: the table shows them.
    ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    return (lo, hi) if ok else (None, None)


def framing_table(audit: AuditReport) -> pd.DataFrame:
    """One row per framing: wording, expectation, shifts with CIs, flips, accuracy and ECE."""
    rows = []
    for name, f in audit.main.framings.items():
        cell = (audit.main.comparisons.get(name) or {}).get("overall") or {}
        rows.append(
            {
                "framing": name,
                "template": f.template,
                "role": "reference" if f.is_reference else f.expect,
                "gated": f.gated,
                "mean shift [95% CI]": fmt_estimate(cell.get("mean_shift"), 4) if cell else "",
                "median shift [95% CI]": fmt_estimate(cell.get("median_shift"), 4) if cell else "",
                "p (Holm input)": cell.get("p_value"),
                "Wilcoxon p": (cell.get("wilcoxon") or {}).get("p"),
                "flips": cell.get("flips"),
                "flip rate [95% CI]": fmt_estimate(cell.get("flip_rate"), 3) if cell else "",
                "accuracy [95% CI]": fmt_estimate(f.accuracy),
                "ECE [95% CI]": fmt_estimate(f.ece),
            }
        )
    return pd.DataFrame(rows)


def estimates_frame(audit: AuditReport, key: str) -> pd.DataFrame:
    """framing, value, ci_low, ci_high of one overall estimate (mean_shift, flip_rate, ...)."""
    rows = []
    for name, comp in audit.main.comparisons.items():
        est = comp["overall"].get(key) or {}
        lo, hi = _ci(est)
        if est.get("value") is None:
            continue
        rows.append({"framing": name, "value": est["value"], "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["framing", "value", "ci_low", "ci_high"])


def score_shifts(scores_csv: bytes, reference: str) -> pd.DataFrame:
    """Per image and framing: shift of the target-class probability vs the reference framing.

    Columns: row, framing, target, shift (probability units), raw_shift (similarity units).
    """
    df = pd.read_csv(io.BytesIO(scores_csv))
    ref = df[df["framing"] == reference].set_index("row")
    out = df[df["framing"] != reference].copy()
    out["shift"] = out["target_prob"].to_numpy() - ref.loc[out["row"], "target_prob"].to_numpy()
    out["raw_shift"] = (
        out["raw_similarity"].to_numpy() - ref.loc[out["row"], "raw_similarity"].to_numpy()
    )
    return out[["row", "framing", "target", "shift", "raw_shift"]].reset_index(drop=True)


def _cell_columns(cell: dict[str, Any]) -> dict[str, Any]:
    """The columns every table of shift cells shows: n, mean shift, flip rate, tested."""
    return {
        "n": cell["n"],
        "mean shift [95% CI]": fmt_estimate(cell["mean_shift"], 4),
        "flip rate [95% CI]": fmt_estimate(cell["flip_rate"], 3),
        "tested": cell["tested"],
    }


def subgroup_table(audit: AuditReport, allowed: Iterable[str] = ()) -> pd.DataFrame:
    """Shift and flip statistics per framing x subgroup value (columns neither on the safe list
    nor in `allowed` left out, see `domainclip.privacy`)."""
    rows = []
    for name, comp in audit.main.comparisons.items():
        for column, cells in comp["per_subgroup"].items():
            if not is_shown_column(column, allowed):
                continue
            rows += [
                {
                    "framing": name,
                    "column": column,
                    "value": value,
                    **_cell_columns(cell),
                    "note": cell.get("reason", ""),
                }
                for value, cell in cells.items()
            ]
    return pd.DataFrame(
        rows,
        columns=[
            "framing",
            "column",
            "value",
            "n",
            "mean shift [95% CI]",
            "flip rate [95% CI]",
            "tested",
            "note",
        ],
    )


def subgroup_calibration_table(audit: AuditReport, allowed: Iterable[str] = ()) -> pd.DataFrame:
    """ECE and accuracy per subgroup value under each framing (withheld columns left out)."""
    rows = []
    for column, values in audit.main.subgroup_calibration.items():
        if not is_shown_column(column, allowed):
            continue
        for value, per_framing in values.items():
            for framing, rec in per_framing.items():
                rows.append(
                    {
                        "column": column,
                        "value": value,
                        "framing": framing,
                        "n": rec.get("n"),
                        "ECE": rec.get("ece"),
                        "accuracy": rec.get("accuracy"),
                    }
                )
    return pd.DataFrame(rows, columns=["column", "value", "framing", "n", "ECE", "accuracy"])


def per_class_table(audit: AuditReport) -> pd.DataFrame:
    """Shift and flip statistics per framing x target class, with each cell's power."""
    rows = [
        {
            "framing": name,
            "class": cls,
            **_cell_columns(cell),
            "status": cell.get("status", "not recorded"),
            "detectable shift (80% power)": cell.get("min_detectable_shift"),
            "log-odds shift [95% CI]": fmt_estimate(cell.get("logodds_shift"), 3),
            "p (sign-flip)": cell.get("p_value"),
        }
        for name, comp in audit.main.comparisons.items()
        for cls, cell in comp["per_class"].items()
    ]
    return pd.DataFrame(rows)


def power_table(audit: AuditReport) -> pd.DataFrame:
    """Per gated cell group (all, each class): n, status, the smallest shift the audit could
    detect with 80% power (largest over the gated framings; empty = nothing up to 1), images
    needed. Empty for files written before power was reported."""
    cells = cell_power(audit) or []
    return pd.DataFrame(
        [
            {
                "cell": c["cell"],
                "n": c["n"],
                "status": c["status"],
                "could detect shifts of at least": c["mds"],
                "images needed": c["images_needed"],
            }
            for c in cells
        ],
        columns=["cell", "n", "status", "could detect shifts of at least", "images needed"],
    )


def side_by_side_table(audit: AuditReport) -> pd.DataFrame:
    """`--compare`: per framing, shift and flip rate of both runs with CIs and the paired
    differences (empty without a comparison)."""
    return pd.DataFrame(side_by_side_rows(audit), columns=SIDE_BY_SIDE_HEADER)


def checks_table(audit: AuditReport) -> pd.DataFrame:
    """Every gate check: id, status, value, threshold, message."""
    return pd.DataFrame(
        [
            {
                "check": c.id,
                "status": c.status,
                "value": c.value,
                "threshold": c.threshold,
                "message": c.message,
            }
            for c in audit.gate.checks
        ],
        columns=["check", "status", "value", "threshold", "message"],
    )


def hidden_subgroup_columns(audit: AuditReport, allowed: Iterable[str] = ()) -> list[str]:
    """Subgroup columns of the audit withheld from display (names only)."""
    cols = set(audit.main.subgroup_calibration)
    for comp in audit.main.comparisons.values():
        cols |= set(comp["per_subgroup"])
    return sorted(c for c in cols if not is_shown_column(c, allowed))
