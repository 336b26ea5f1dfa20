"""The shipped specs on the real data sets, with the untrained embedded default model.

Ten test-split images per class (NEU-DET) or the whole test split (covid-cxr) keep the runtime
to about a minute each on 2 CPU cores; `domainclip audit default --spec neu_det --data ...`
does the same on the full split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainclip.audit import load_audit_spec, run_audit
from domainclip.datasets import read_manifest, write_manifest
from domainclip.datasets.importers import run_import

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def default_backbone():
    from domainclip.models import load_backbone

    return load_backbone("default")


def _subset(manifest: Path, out: Path, per_class: int) -> Path:
    m = read_manifest(manifest)
    taken: dict[str, int] = {}
    rows = []
    for r in m.rows:
        if r.split != "test" or taken.get(r.label[0], 0) >= per_class:
            continue
        taken[r.label[0]] = taken.get(r.label[0], 0) + 1
        r.image = str(m.image_path(r))
        rows.append(r)
    write_manifest(rows, out)
    return out


def test_neu_det_audit_of_the_untrained_default(neu_det_dir, tmp_path, default_backbone):
    imported = run_import("neu-det", neu_det_dir, tmp_path / "neu")
    manifest = _subset(imported.manifest_path, tmp_path / "subset.csv", per_class=10)
    result = run_audit(default_backbone, "neu_det", manifest, out_dir=tmp_path / "audit")
    data = json.loads((tmp_path / "audit" / "audit.json").read_text())
    spec = load_audit_spec("neu_det")
    assert data["data"]["n_per_class"] == dict.fromkeys(spec.labels, 10)
    assert data["data"]["skipped"]["findings_absent"] == []
    # 4 gated framings x (all + 6 classes) mean-shift checks + 4 flip-rate + 5 ECE checks
    # + 2 performance floors (balanced accuracy, macro AUROC above chance)
    assert data["gate"]["n_checks"] == 4 * 7 + 4 + 5 + 2
    assert data["gate"]["n_skipped"] == 0  # every class cell has min_cell_images = 10 images
    man = read_manifest(manifest)
    rows = {r.row: r for r in man.rows}
    for examples in data["flip_examples"].values():
        for ex in examples:  # named by manifest row (file names may carry ids); the row finds the file
            assert ex["path"] == "" and ex["image"] == f"row {ex['row']}"
            path = man.image_path(rows[ex["row"]])
            assert path.is_file() and str(neu_det_dir) in str(path.resolve())
    assert result.table.logits.shape == (6, 60, 6)
    assert (tmp_path / "audit" / "junit.xml").is_file()


def test_covid_cxr_audit_of_the_untrained_default(covid_cxr_dir, tmp_path, default_backbone):
    imported = run_import("covid-cxr", covid_cxr_dir, tmp_path / "covid")
    result = run_audit(
        default_backbone, "covid_cxr", imported.manifest_path, out_dir=tmp_path / "audit"
    )
    data = result.data
    test_rows = [r for r in read_manifest(imported.manifest_path).rows if r.split == "test"]
    spec_labels = set(load_audit_spec("covid_cxr").labels)
    outside = [r for r in test_rows if not spec_labels & set(r.label)]
    # every test row is either scored or listed as having no spec label
    assert data["data"]["n_images"] + len(outside) == len(test_rows)
    assert sum(data["data"]["skipped"]["rows_without_spec_label"].values()) == len(outside)
    assert set(data["data"]["subgroups"]) == {"view", "sex"}
    assert "COVID-19" in data["comparisons"]["alarming"]["per_class"]
    # Findings with a handful of test images are reported but not tested.
    n_small = {c: n for c, n in data["data"]["n_per_class"].items() if n < 10}
    assert n_small  # the test split has a handful of non-COVID images per finding
    for c in n_small:
        cell = data["comparisons"]["alarming"]["per_class"][c]
        assert cell["tested"] is False
        assert cell["reason"].startswith(f"n={n_small[c]}")
