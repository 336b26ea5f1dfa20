"""Evaluate carries the geometry report: what its fit policy does to the split's boxes/masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainclip.datasets.manifest import ManifestRow, write_manifest
from domainclip.evaluation.evaluate import evaluate
from domainclip.evaluation.results import EvaluationResult
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone
from tests.datasets.helpers import save_rgb

REPO = Path(__file__).resolve().parents[2]
PROMPTS = str(REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml")
CLASSES = ("scratch", "pit", "crack")


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    bb = tiny_open_clip_backbone("cnn", image_size=64, seed=1)
    return save_backbone(bb, tmp_path_factory.mktemp("bb") / "tiny")


def _strips(folder: Path, with_boxes: bool) -> Path:
    """Six 256 x 64 strips: crop at 64 px keeps x in [96, 160), so end boxes are cut."""
    rows = []
    for i in range(6):
        save_rgb(folder / f"{i}.png", (256, 64), (40 * i, 90, 200 - 20 * i))
        c = CLASSES[i % 3]
        boxes = [[2, 20, 20, 40, c], [236, 20, 254, 40, c], [120, 20, 136, 36, c]]
        meta = {"boxes": json.dumps(boxes)} if with_boxes else {}
        rows.append(ManifestRow(f"{i}.png", f"a {c} on a strip", [c], f"g{i}", "test", meta))
    return write_manifest(rows, folder / "manifest.csv")


def test_metrics_json_and_report_carry_the_geometry(backbone_dir, tmp_path):
    manifest = _strips(tmp_path / "data", with_boxes=True)
    out = tmp_path / "eval"
    m = evaluate(
        backbone_dir, manifest, "test", PROMPTS, out, n_boot=20, classes=CLASSES, fit="crop"
    )
    g = m["geometry"]
    assert (g["policy"], g["size"], g["split"]) == ("crop", 64, "test")
    assert g["total"]["n_images"] == 6 and g["total"]["n_non_square"] == 6
    assert g["total"]["n_findings"] == 18 and g["total"]["n_cut"] == 12
    assert {c: g["classes"][c]["n_cut"] for c in CLASSES} == {c: 4 for c in CLASSES}
    written = EvaluationResult.read(out / "metrics.json")
    assert written.geometry is not None and written.geometry.total.n_cut == 12
    report = (out / "report.md").read_text()
    assert "## Input geometry" in report
    assert "12 of 18 annotated findings are outside the model's input under crop" in report
    # a metrics.json written before the field existed still reads
    data = json.loads((out / "metrics.json").read_text())
    del data["geometry"]
    assert EvaluationResult.from_json(data).geometry is None


def test_policy_option_and_no_geometry_without_annotations(backbone_dir, tmp_path):
    manifest = _strips(tmp_path / "boxed", with_boxes=True)
    m = evaluate(
        backbone_dir,
        manifest,
        "test",
        PROMPTS,
        tmp_path / "lb",
        n_boot=0,
        classes=CLASSES,
        fit="letterbox",
    )
    assert m["geometry"]["policy"] == "letterbox" and m["geometry"]["total"]["n_cut"] == 0
    # letterboxed at 64 px an 18 px box is 4.5 px and a 16 px one 4 px: none below 4 px
    assert m["geometry"]["total"]["n_small"] == 0
    plain = _strips(tmp_path / "plain", with_boxes=False)
    m = evaluate(
        backbone_dir, plain, "test", PROMPTS, tmp_path / "plain_eval", n_boot=0, classes=CLASSES
    )
    assert "geometry" not in m
    assert "Input geometry" not in (tmp_path / "plain_eval" / "report.md").read_text()
