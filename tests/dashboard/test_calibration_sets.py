"""Calibration page: the calibrator chosen (kind and why) and the conformal coverage and set sizes
read from metrics.json (evaluate --calibrate ... --conformal)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from domainclip.calibrators.conformal import fit_conformal
from domainclip.dashboard.calibdata import conformal_frame
from domainclip.evaluation.conformal import conformal_report

from .conftest import DashRuns
from .helpers import metrics, no_exceptions, page_text


def _conformal_block(classes: list[str]) -> dict:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), 60)
    labels = probs.argmax(1)
    thr = fit_conformal(probs[:30], labels[:30], 0.1, "lac", split="val")
    return conformal_report(thr, probs[30:], labels[30:], classes)


def test_conformal_frame_rows():
    block = _conformal_block(["a", "b", "c"])
    frame = conformal_frame(block)
    assert list(frame["class"]) == ["all", "a", "b", "c"] and frame["n"].iloc[0] == 30
    assert frame["coverage"].iloc[0].startswith(f"{block['coverage']['value']:.3f} [")


def test_calibration_page_shows_calibrator_and_coverage(
    dash_runs: DashRuns, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import APP, serve

    root = tmp_path / "runs"
    run = root / "lora"
    shutil.copytree(dash_runs.lora, run)
    metrics_file = next((run / "eval").glob("*/metrics.json"))
    m = json.loads(metrics_file.read_text())
    classes = list(m["classification"]["per_class"]) if "per_class" in m["classification"] else ["x", "y"]
    m["conformal"] = _conformal_block(classes)
    m["temperature"].update(kind="bias", description="temperature T = 2 + per-class bias [...]",
                            fit={**(m["temperature"].get("fit") or {}),
                                 "selection": {"reason": "bias: lowest 5-fold cross-validated NLL"}})
    metrics_file.write_text(json.dumps(m))
    serve(monkeypatch, root, dash_runs.data)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("views/calibration.py").run()
    no_exceptions(at)
    shown = metrics(at)
    assert shown["Conformal coverage"].startswith(f"{m['conformal']['coverage']['value']:.3f}")
    assert shown["Mean set size"] == f"{m['conformal']['mean_set_size']:.2f}"
    text = page_text(at)
    assert "bias: lowest 5-fold cross-validated NLL" in text and "exchangeable" in text
    assert any(list(df.value.columns) == ["class", "n", "coverage"] for df in at.dataframe)
