"""Evaluate with label words in the texts (retrieval repeated with them masked) and with a
continuous age column (binned into decades for the subgroup ECE, not dropped)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from domainclip.evaluation.evaluate import EvaluationOptions, run_evaluation
from domainclip.evaluation.results import EvaluationResult
from domainclip.models.testing import tiny_open_clip_backbone

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, synthetic_manifest):
    """The synthetic manifest (texts name their class: "two long scratches ...") with an age
    column of 12 distinct values over 30..89, evaluated once."""
    tmp = tmp_path_factory.mktemp("leak")
    with synthetic_manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):
        r["age"] = str(30 + (i * 7) % 60)
        r["image"] = str(synthetic_manifest.parent / r["image"])
        if r["mask"]:
            r["mask"] = str(synthetic_manifest.parent / r["mask"])
    man = tmp / "m.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bb = tiny_open_clip_backbone("cnn", image_size=64, seed=3)
    opts = EvaluationOptions(n_boot=30, temperature=2.0, baselines=False, shortcut_check=False)
    return run_evaluation(bb, man, "test", PROMPTS, tmp / "out", opts), tmp / "out"


def test_label_words_are_found_and_retrieval_is_repeated_masked(evaluated):
    result, out = evaluated
    leak = result.text_leakage
    assert leak is not None and "scratch" in leak["leaking_classes"]
    assert leak["leaking_classes"]["scratch"] == pytest.approx(1.0)
    assert leak["n_masked_rows"] > 0
    for key in ("texts", "masked"):
        v = leak["label_accuracy"][key]["value"]
        assert 0.0 <= v <= 1.0
    assert 0.0 <= leak["retrieval"]["i2t_R@1"]["value"] <= 1.0
    md = (out / "report.md").read_text()
    assert "## Label words in the texts" in md and "label words masked" in md
    back = EvaluationResult.read(out / "metrics.json")  # typed, read back
    assert back.text_leakage["n_masked_rows"] == leak["n_masked_rows"]


def test_age_is_a_binned_subgroup(evaluated):
    result, out = evaluated
    ages = result.calibration.subgroups["age"]
    assert set(ages) <= {f"{d}-{d + 9}" for d in range(30, 90, 10)} and len(ages) >= 2
    assert sum(v["n"] for v in ages.values()) == result.data.n_evaluated
    assert all(np.isfinite(v["ece"]["value"]) for v in ages.values() if v["n"] > 0 and "ece" in v)
