"""Write an evaluation's files: metrics.json, predictions.csv, PNG plots and a Markdown report."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domainclip.evaluation.calibration import ReliabilityBins, plot_reliability
from domainclip.evaluation.embed import EmbeddedSplit
from domainclip.evaluation.plots import plot_confusion_matrix
from domainclip.evaluation.report import render_markdown
from domainclip.evaluation.task import Targets


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary sibling + fsync + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predictions_csv(
    emb: EmbeddedSplit, tgt: Targets, probs: np.ndarray, classes: Sequence[str], multi: bool
) -> str:
    """One row per evaluated image: manifest row, image path, labels, prediction and P(class)."""
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
                emb.paths[i],
                "|".join(r.label),
                predicted,
                f"{conf:.6f}",
                *[f"{v:.6f}" for v in p],
            ]
        )
    return buf.getvalue()


def write_outputs(
    result: dict[str, Any],
    out_dir: Path,
    emb: EmbeddedSplit,
    tgt: Targets,
    probs: np.ndarray,
    classes: Sequence[str],
    multi: bool,
    extra_files: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write every file of an evaluation into `out_dir`; returns {kind: path}.

    extra_files: files already written by the caller (e.g. the forgetting curve), listed too.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = dict(extra_files or {})
    cal = result["calibration"]
    for when in ("before", "after"):
        if cal.get(when) is None:
            continue
        bins = ReliabilityBins.from_dict(cal[when]["bins_width"])
        t = result["temperature"]["value"] if when == "after" else 1.0
        files[f"reliability_{when}"] = str(
            plot_reliability(
                bins,
                out_dir / f"reliability_{when}.png",
                f"{result['name']}: {when} temperature scaling (T={t:.3g})",
            )
        )
    if not multi:
        files["confusion_matrix"] = str(
            plot_confusion_matrix(
                result["classification"]["confusion_matrix"],
                classes,
                out_dir / "confusion_matrix.png",
                f"{result['name']} (zero-shot)",
            )
        )
    pred_path = out_dir / "predictions.csv"
    atomic_write_text(pred_path, predictions_csv(emb, tgt, probs, classes, multi))
    files["predictions"] = str(pred_path)
    files["report"] = str(out_dir / "report.md")
    files["metrics"] = str(out_dir / "metrics.json")
    result["outputs"] = files
    atomic_write_text(out_dir / "report.md", render_markdown(result))
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2, allow_nan=False))
    return files
