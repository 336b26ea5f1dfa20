"""`run_audit` end to end on tiny synthetic data: outputs, cost, skips, base-model comparison."""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from domainclip.audit import PlantedBiasBackbone, run_audit
from domainclip.datasets import read_manifest, write_manifest
from domainclip.errors import DataError
from tests.audit.conftest import POSSIBLY, SEVERE, small_spec


class CountingBackbone(PlantedBiasBackbone):
    """Records how many images and texts reach the encoders."""

    def encode_images(self, pixels, batch_size=64):
        self.info.setdefault("images", 0)
        self.info["images"] += len(pixels)
        return super().encode_images(pixels, batch_size)

    def encode_texts(self, texts, batch_size=128):
        self.info.setdefault("texts", [])
        self.info["texts"].extend(texts)
        return super().encode_texts(texts, batch_size)


def planted(tiny, delta: float, cls=PlantedBiasBackbone):
    return cls.wrap(tiny, {SEVERE: delta, POSSIBLY: 0.0})


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_backbone, manifest_path):
    """One full audit (with base-model comparison) of a model with a strong planted bias."""
    out = tmp_path_factory.mktemp("audit_out")
    model = planted(tiny_backbone, 3.0, CountingBackbone)
    base = planted(tiny_backbone, 0.0)
    # The tiny random models are at chance: performance floor off (tests/audit/test_floor.py).
    spec = small_spec(performance_floor=False)
    result = run_audit(model, spec, manifest_path, split=None, out_dir=out, compare=base)
    return result, model, out


def test_each_image_and_each_prompt_is_embedded_once(audited, manifest_path):
    result, model, _ = audited
    n_rows = len(read_manifest(manifest_path).rows)
    assert result.table.n == n_rows == 80
    assert model.info["images"] == n_rows
    texts = model.info["texts"]
    assert len(texts) == len(set(texts))  # every distinct prompt once
    # 4 framings x 4 framed findings + 1 control text shared by every framing
    assert len(texts) == 4 * 4 + 1


def test_files_and_numbers_in_audit_json(audited):
    result, _, out = audited
    data = json.loads((out / "audit.json").read_text())
    assert data == json.loads(json.dumps(result.data))  # what is returned is what is written
    for name in ("audit.json", "report.md", "report.html", "junit.xml", "scores.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "shift_distributions.png").read_bytes()[:4] == b"\x89PNG"
    overall = data["comparisons"]["alarming"]["overall"]
    for key in ("mean_shift", "median_shift", "raw_similarity_shift", "flip_rate"):
        lo, hi = overall[key]["ci95"]
        assert lo <= overall[key]["value"] <= hi, key
    # The planted +3 logits on every defect prompt: clean images lose their target probability.
    clean = data["comparisons"]["alarming"]["per_class"]["clean"]
    assert clean["mean_shift"]["ci95"][1] < 0
    assert set(data["comparisons"]["alarming"]["per_subgroup"]["texture"]) == {"brushed", "cast"}
    assert data["framings"]["neutral"]["ece"]["ci95"] is not None
    assert data["gate"]["thresholds"]["max_abs_mean_shift"] == 0.02
    # The hedged framing is exactly the reference for this model: no shift, no flip.
    hedged = data["comparisons"]["hedged"]["overall"]
    assert hedged["mean_shift"]["value"] == 0.0 and hedged["flips"] == 0
    assert hedged["wilcoxon"]["note"] == "all differences are zero"
    assert data["negation"]["negated"]["lowers_score"] in (True, False)


def test_verdict_lists_the_crossed_thresholds(audited):
    result, _, out = audited
    failed = {c["id"] for c in result.failed_checks}
    assert result.verdict == "fail"
    assert "mean_shift/alarming/class=clean" in failed and "flip_rate/alarming" in failed
    assert not any("hedged" in f for f in failed)
    root = ET.parse(out / "junit.xml").getroot()
    assert int(root.get("failures")) == len(failed)
    assert len(root.findall(".//testcase")) == len(result.data["gate"]["checks"])
    md = (out / "report.md").read_text()
    assert "**Verdict: FAIL**" in md and "mean_shift/alarming/class=clean" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<strong>Verdict: FAIL</strong>" in html


def test_flip_examples_carry_what_the_dashboard_needs(audited, manifest_path):
    result, _, _ = audited
    examples = result.data["flip_examples"]["alarming"]
    assert 0 < len(examples) <= 12
    t = result.table
    k, r = t.k("alarming"), t.k("neutral")
    n_flipped = int(np.sum(t.decisions[k] != t.decisions[r]))
    assert result.data["comparisons"]["alarming"]["overall"]["flips"] == n_flipped
    ex = examples[0]
    # Images are named by manifest row (paths only with show_paths); the dashboard finds the
    # file through the manifest row.
    assert ex["path"] == "" and ex["image"] == f"row {ex['row']}"
    man = read_manifest(manifest_path)
    assert man.image_path(next(r for r in man.rows if r.row == ex["row"])).is_file()
    assert ex["reference"]["decision"] != ex["framed"]["decision"]
    assert SEVERE in ex["framed"]["prompt_decision"] or ex["framed"]["decision"] == "clean"
    assert ex["shift"] == pytest.approx(
        ex["framed"]["target_prob"] - ex["reference"]["target_prob"]
    )
    shifts = [abs(e["shift"]) for e in examples]
    assert shifts == sorted(shifts, reverse=True)


def test_scores_csv_has_one_row_per_image_and_framing(audited):
    result, _, out = audited
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 80 * 4
    first = [r for r in rows if r["framing"] == "alarming"][0]
    i = 0
    assert float(first["target_prob"]) == pytest.approx(result.table.scores[1, i], abs=1e-6)


def test_comparison_with_the_base_model_finds_the_amplified_bias(audited):
    result, _, _ = audited
    change = result.data["compare"]["sensitivity_change"]
    clean = change["alarming"]["per_class"]["clean"]
    assert clean["verdict"] == "amplified"
    assert clean["mean_abs_shift_base"] == 0.0
    assert clean["mean_abs_shift_difference"]["ci95"][0] > 0
    assert change["hedged"]["overall"]["verdict"] == "no clear change"
    assert result.data["compare"]["base"]["gate"]["verdict"] == "pass"


def _absolute_rows(synthetic_dir: Path):
    """The synthetic rows with absolute image paths, to rewrite into a manifest elsewhere."""
    m = read_manifest(synthetic_dir / "manifest.csv")
    for r in m.rows:
        r.image = str(m.image_path(r))
    return m.rows


def test_absent_findings_unknown_labels_and_missing_columns_are_listed(
    tmp_path, tiny_backbone, synthetic_dir, caplog
):
    rows = [r for r in _absolute_rows(synthetic_dir) if r.label != ["patch"]]  # lacks a finding
    rows[0].label = ["dent"]  # and has a label the spec does not know
    write_manifest(rows, tmp_path / "m.csv")
    raw = small_spec()
    raw["subgroups"] = ["texture", "lot_colour"]
    with caplog.at_level(logging.WARNING, logger="domainclip.audit"):
        result = run_audit(planted(tiny_backbone, 0.0), raw, tmp_path / "m.csv", split=None)
    skipped = result.data["data"]["skipped"]
    assert skipped["findings_absent"] == ["patch"]
    assert skipped["rows_without_spec_label"] == {"dent": 1}
    assert skipped["subgroups_absent"] == ["lot_colour"]
    assert "patch" not in result.table.classes
    assert "patch" in caplog.text and "lot_colour" in caplog.text and "dent" in caplog.text
    assert (
        result.out_dir is None and result.files == {}
    )  # a Backbone without --out: nothing written


def test_unreadable_image_is_skipped_and_counted(tmp_path, tiny_backbone, synthetic_dir):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = _absolute_rows(synthetic_dir)
    rows[0].image = str(broken)
    write_manifest(rows, tmp_path / "m.csv")
    result = run_audit(planted(tiny_backbone, 0.0), small_spec(), tmp_path / "m.csv", split=None)
    assert result.table.n == len(rows) - 1
    assert result.data["data"]["skipped"]["unreadable_images"] == 1


def test_too_few_findings_in_the_split_is_an_error(tiny_backbone, manifest_path):
    raw = small_spec()
    raw["findings"] = {"scratch": "scratches", "dent": "dents"}
    with pytest.raises(DataError, match="at least two"):
        run_audit(planted(tiny_backbone, 0.0), raw, manifest_path, split=None)
    with pytest.raises(DataError, match="no rows in split"):
        run_audit(planted(tiny_backbone, 0.0), small_spec(), manifest_path, split="unassigned")


def test_compare_shows_both_runs_side_by_side_with_paired_differences(audited):
    result, _, out = audited
    change = result.data["compare"]["sensitivity_change"]["alarming"]["overall"]
    sbs = change["side_by_side"]
    main = result.data["comparisons"]["alarming"]["overall"]
    base = result.data["compare"]["base"]["comparisons"]["alarming"]["overall"]
    assert sbs["mean_shift_model"] == main["mean_shift"]
    assert sbs["mean_shift_base"] == base["mean_shift"]
    assert sbs["flip_rate_model"] == main["flip_rate"] and sbs["flip_rate_base"] == base["flip_rate"]
    diff = sbs["mean_shift_difference"]
    assert diff["value"] == pytest.approx(main["mean_shift"]["value"] - base["mean_shift"]["value"])
    assert diff["ci95"][0] <= diff["value"] <= diff["ci95"][1]
    assert 0 < sbs["flip_rate_difference_p"] <= 1 and 0 < sbs["mean_shift_difference_p"] <= 1
    # the planted +3 logit moves decisions: the flip-rate difference is significant
    assert sbs["flip_rate_difference_p"] < 0.05
    report = (out / "report.md").read_text()
    assert "This run vs `planted-bias(" in report and "flip rate: compared" in report
