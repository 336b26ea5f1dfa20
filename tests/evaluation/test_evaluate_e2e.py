"""End to end: `domainclip evaluate` on a saved tiny backbone and a tiny synthetic manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from domainclip.cli import main
from domainclip.evaluation.evaluate import evaluate
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC_PROMPTS = str(REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml")


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    return save_backbone(
        tiny_open_clip_backbone("cnn", seed=5), tmp_path_factory.mktemp("bb") / "tiny"
    )


def _estimates(node, path=""):
    """Every {"value", "ci95"} dict in a metrics tree, with its path."""
    if isinstance(node, dict):
        if "value" in node and "ci95" in node:
            yield path, node
        for k, v in node.items():
            yield from _estimates(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _estimates(v, f"{path}[{i}]")


def test_cli_evaluate_writes_metrics_plots_report_and_temperature(
    backbone_dir, synthetic_manifest, tmp_path, capsys
):
    out = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            str(backbone_dir),
            "--data",
            str(synthetic_manifest),
            "--prompts",
            SYNTHETIC_PROMPTS,
            "--out",
            str(out),
            "--fit-temperature",
            "--bins",
            "10",
            "--n-boot",
            "100",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "accuracy:" in printed and "ECE before:" in printed
    m = json.loads((out / "metrics.json").read_text())
    with open(synthetic_manifest) as fh:
        n_test = sum(1 for r in csv.DictReader(fh) if r["split"] == "test")
    assert m["data"]["n_evaluated"] == n_test and m["data"]["split"] == "test"
    assert m["prompts"]["version"] == "synthetic-1"
    cls = m["classification"]
    assert set(cls["per_class"]) == {"scratch", "pit", "crack", "patch", "clean"}
    assert sum(map(sum, cls["confusion_matrix"])) == n_test
    assert 0.0 <= cls["accuracy"]["value"] <= 1.0
    # Temperature fitted on val, saved next to the results, calibration before/after reported.
    t = m["temperature"]
    assert t["source"] == "fitted" and t["fit"]["split"] == "val" and t["value"] > 0
    assert json.loads((out / "calibration.json").read_text())["temperature"] == t["value"]
    assert t["fit"]["nll_after"] <= t["fit"]["nll_before"] + 1e-9
    assert m["calibration"]["after"]["ece"]["value"] is not None
    assert m["calibration"]["before"]["n_bins"] == 10
    assert "texture" in m["calibration"]["subgroups"]  # brushed / cast
    assert m["retrieval"]["n_images"] == n_test
    # Every number carries an interval; discrimination and retrieval intervals contain the estimate.
    ests = list(_estimates(m))
    assert len(ests) > 30
    for path, e in ests:
        if e["value"] is None:
            assert e["reason"], path
        elif not path.startswith("/calibration"):  # ECE is biased upward: see calibration_report
            lo, hi = e["ci95"]
            assert lo - 1e-12 <= e["value"] <= hi + 1e-12, path
    for png in ("reliability_before.png", "reliability_after.png", "confusion_matrix.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG"
    with open(out / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert (
        len(preds) == n_test
        and abs(sum(float(preds[0][f"p_{c}"]) for c in cls["per_class"]) - 1) < 1e-4
    )
    report = (out / "report.md").read_text()
    assert "## Calibration" in report and "reliability_after.png" in report


def test_library_evaluate_multi_label_mode(backbone_dir, synthetic_manifest, tmp_path):
    prompts = {
        "version": "syn-ml-1",
        "mode": "multi_label",
        "templates": {
            "positive": ["a metal surface with {label}"],
            "negative": ["a metal surface without {label}"],
        },
        "classes": {"scratch": None, "pit": None, "crack": None, "patch": None},
        "negative_labels": ["clean"],
    }
    r = evaluate(
        str(backbone_dir),
        synthetic_manifest,
        "test",
        prompts,
        tmp_path / "ml",
        n_boot=50,
        temperature=2.0,
    )
    assert r["prompts"]["mode"] == "multi_label" and r["temperature"]["source"] == "given"
    assert set(r["classification"]["per_class"]) == {"scratch", "pit", "crack", "patch"}
    assert r["classification"]["macro_auroc"]["value"] is not None
    assert r["calibration"]["after"] is not None  # T = 2 given
    assert not (tmp_path / "ml" / "confusion_matrix.png").exists()  # single-label only
    assert (tmp_path / "ml" / "reliability_after.png").is_file()


def test_cli_errors_are_clean(backbone_dir, synthetic_manifest, tmp_path, capsys):
    neu = str(REPO / "domainclip" / "configs" / "prompts" / "neu_det.yaml")
    base = ["evaluate", str(backbone_dir), "--data", str(synthetic_manifest), "--n-boot", "0"]
    assert main([*base, "--prompts", neu, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "'crazing'" in err and "Traceback" not in err
    assert main([*base, "--prompts", SYNTHETIC_PROMPTS]) == 2
    assert "--out" in capsys.readouterr().err
    assert (
        main(
            [*base, "--prompts", SYNTHETIC_PROMPTS, "--out", str(tmp_path / "y"), "--split", "nope"]
        )
        == 2
    )
    assert "unknown split" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--prompts",
                SYNTHETIC_PROMPTS,
                "--out",
                str(tmp_path / "z"),
                "--reference",
                str(synthetic_manifest),
            ]
        )
        == 2
    )
    assert "needs a fine-tuning run" in capsys.readouterr().err
