"""`domainclip demo` end to end: the README's first command, every stage in one run.

Slow (about 2.5 minutes on 2 idle cores), so it carries the `slow` marker; CI runs it.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from domainclip.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_writes_what_it_promises(tmp_path, capsys):
    out = tmp_path / "demo_out"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # nothing may land in the working directory but the demo folder
    try:
        assert main(["demo", "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    run = out / "runs" / "synthetic_lora"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_out"]
    result = json.loads((run / "result.json").read_text())
    assert result["best_step"] >= 0
    evals = list((run / "eval").glob("*/metrics.json"))
    tuned = [json.loads(p.read_text()) for p in evals if "conformal" in json.loads(p.read_text())]
    assert tuned and tuned[0]["temperature"]["kind"] in ("temperature", "bias", "isotonic")
    assert tuned[0]["baselines"]["linear_probe"]["metrics"]
    record = json.loads((run / "calibration.json").read_text())
    assert "conformal" in record
    card = (run / "MODEL_CARD.md").read_text()
    assert "How this compares" in card and "could detect" in card
    assert (out / "runs" / "synthetic_robust" / "MODEL_CARD.md").is_file()
    assert (run / "index" / "train").is_dir() and "retrieved, not generated" in printed
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert rows and all(r["status"] == "ok" for r in rows) and "prediction_set" in rows[0]
    assert "gate verdict" in printed and "domainclip dashboard --runs" in printed
