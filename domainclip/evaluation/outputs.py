"""Write an evaluation's files: metrics.json, predictions.csv, PNG plots and a Markdown report."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from domainclip.evaluation.calibration import ReliabilityBins, plot_reliability
from domainclip.evaluation.embed import EmbeddedSplit
from domainclip.evaluation.plots import plot_confusion_matrix
from domainclip.evaluation.report import render_markdown
from domainclip.evaluation.results import METRICS_FILE, EvaluationResult
from domainclip.evaluation.selective import plot_risk_coverage
from domainclip.evaluation.task import Targets
from domainclip.io import atomic_write_text
from domainclip.privacy import image_name


def predictions_csv(
    emb: EmbeddedSplit,
    tgt: Targets,
    probs: np.ndarray,
    classes: Sequence[str],
    multi: bool,
    show_paths: bool = False,
) -> str:
    """One row per evaluated image: manifest row, image name (`privacy.image_name`: "row N",
    the path only with `show_paths`), labels, prediction and P(class)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "image", "label", "predicted", "confidence", *[f"p_{c}" for c in classes]])
    for k, i in enumerate(tgt.keep):
        r = emb.rows[i]
        p = probs[k]
        if multi:
            predicted = "|".join(c for c, v in zip(classes, p, strict=True) if v >= 0.5)
            conf = float(np.max(p))
        else:
            predicted, conf = classes[int(np.argmax(p))], float(np.max(p))
        w.writerow(
            [
                r.row,
                image_name(r.row, emb.paths[i], show_paths),
                "|".join(r.label),
                predicted,
                f"{conf:.6f}",
                *[f"{v:.6f}" for v in p],
            ]
        )
    return buf.getvalue()


def write_outputs(
    result: EvaluationResult,
    out_dir: Path,
    emb: EmbeddedSplit,
    tgt: Targets,
    probs: np.ndarray,
    classes: Sequence[str],
    multi: bool,
    extra_files: dict[str, str] | None = None,
    *,
    show_columns: Sequence[str] = (),
    show_paths: bool = False,
) -> dict[str, str]:
    """Write every file of an evaluation into `out_dir`; returns {kind: path} (also set as
    `result.outputs`).

    extra_files: files already written by the caller (e.g. the forgetting curve), listed too.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = dict(extra_files or {})
    cal = result.calibration
    for when, report in (("before", cal.before), ("after", cal.after)):
        if report is None:
            continue
        bins = ReliabilityBins.from_dict(report["bins_width"])
        what = result.temperature.describe() if when == "after" else "T=1"
        what = what if len(what) <= 60 else what[:57] + "..."
        files[f"reliability_{when}"] = str(
            plot_reliability(
                bins, out_dir / f"reliability_{when}.png", f"{result.name}: {when} calibration ({what})"
            )
        )
    if result.selective is not None:
        files["risk_coverage"] = str(
            plot_risk_coverage(
                result.selective, out_dir / "risk_coverage.png", f"{result.name}: risk-coverage"
            )
        )
    if not multi:
        files["confusion_matrix"] = str(
            plot_confusion_matrix(
                result.classification["confusion_matrix"],
                classes,
                out_dir / "confusion_matrix.png",
                f"{result.name} (zero-shot)",
            )
        )
    pred_path = out_dir / "predictions.csv"
    atomic_write_text(pred_path, predictions_csv(emb, tgt, probs, classes, multi, show_paths))
    files["predictions"] = str(pred_path)
    files["report"] = str(out_dir / "report.md")
    files["metrics"] = str(out_dir / METRICS_FILE)
    result.outputs = files
    atomic_write_text(out_dir / "report.md", render_markdown(result, show_columns))
    result.write(out_dir / METRICS_FILE)
    return files
