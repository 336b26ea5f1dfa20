"""manifest_stats / format_stats on a small hand-computed manifest."""

from __future__ import annotations

import json

from domainclip.datasets.manifest import ManifestRow, write_manifest
from domainclip.datasets.stats import format_stats, manifest_stats


def _manifest(tmp_path):
    rows = [
        ManifestRow("1.png", "one two three", ["scratch"], "lotA", "train"),
        ManifestRow("2.png", "one two", ["scratch", "pit"], "lotA", "train"),
        ManifestRow("3.png", "a b c d e f", ["pit"], "lotB", "train"),
        ManifestRow("4.png", "x", [], "lotC", "val"),
        ManifestRow("5.png", "x y z w", ["pit"], "lotD", "test"),
        ManifestRow("6.png", "x y", ["pit"], "", "unassigned"),
    ]
    return write_manifest(rows, tmp_path / "m.jsonl")


def test_stats_values(tmp_path):
    s = manifest_stats(_manifest(tmp_path))
    assert s["n_rows"] == 6 and s["n_skipped"] == 0
    assert s["splits"] == {"train": 3, "val": 1, "test": 1, "unassigned": 1}
    assert s["class_balance"]["train"] == {"pit": 2, "scratch": 2}
    assert s["class_balance"]["val"] == {"(no label)": 1}
    assert s["label_cardinality"]["train"] == round(4 / 3, 3)
    assert s["groups"] == {"train": 2, "val": 1, "test": 1, "unassigned": 1}
    words = s["text_words"]
    assert (words["all"]["min"], words["all"]["median"], words["all"]["max"]) == (1, 2.5, 6)
    assert words["train"]["median"] == 3.0 and words["train"]["n"] == 3
    # p95 of [1, 2, 2, 3, 4, 6] by linear interpolation: 4 + 0.75 * 2
    assert words["all"]["p95"] == 5.5
    # groups: lotA 2 rows, lotB, lotC, lotD, and "6.png" (no group -> its own) 1 row each
    assert s["rows_per_group"]["max"] == 2 and s["rows_per_group"]["n"] == 5
    json.dumps(s)


def test_format_stats(tmp_path):
    text = format_stats(manifest_stats(_manifest(tmp_path)))
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("label"))
    assert header.split() == ["label", "train", "val", "test", "unassigned"]
    pit = next(line for line in lines if line.strip().startswith("pit"))
    assert "2 (66.7%)" in pit and "1 (100.0%)" in pit
    assert any(line.split()[:2] == ["groups", "2"] for line in lines)
    assert "median=2.5" in text and "max=6" in text
