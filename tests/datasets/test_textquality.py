"""Text quality of a manifest (`datasets.textquality`) and how `data validate` / `data stats`
report it; numeric subgroup columns binned (`datasets.subgroups`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainclip.datasets.manifest import ManifestRow
from domainclip.datasets.subgroups import parse_bin_columns, subgroup_values
from domainclip.datasets.textquality import (
    MASK,
    label_phrases,
    mask_label_words,
    text_quality,
)
from domainclip.errors import ConfigError

PLACEHOLDER = "Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS."


def _row(i: int, text: str, label: str) -> ManifestRow:
    return ManifestRow(image=f"{i}.png", text=text, label=[label], row=i)


def _rows() -> list[ManifestRow]:
    rows = [_row(i, PLACEHOLDER, "Head" if i % 2 else "Abdomen") for i in range(1, 7)]
    rows += [
        _row(7, "CT head without contrast, small bleed", "Head"),
        _row(8, "heads of both femurs visible on a pelvic scan", "Head"),
        _row(9, "liver lesion in the upper right quadrant", "Abdomen"),
        _row(10, "MR abdomen: cyst of the left kidney", "Abdomen"),
        _row(11, "TBD", "Chest"),
        _row(12, "lungs clear, heart of normal size, no effusion", "Chest"),
    ]
    return rows


def test_placeholder_repeated_and_shared_texts_are_counted_with_rows():
    q = text_quality(_rows())
    assert q.placeholder == [1, 2, 3, 4, 5, 6, 11]
    assert q.placeholder_texts == {PLACEHOLDER: 6, "TBD": 1}
    assert q.repeated == {PLACEHOLDER: [1, 2, 3, 4, 5, 6]}
    assert q.n_distinct_texts == 7 and q.n_rows_sharing == 6
    assert q.n_shared_across_classes == 1
    assert q.shared_across_classes[PLACEHOLDER]["labels"] == ["Abdomen", "Head"]
    assert q.flagged


def test_label_leakage_per_class_with_variants_and_synonyms():
    q = text_quality(_rows())
    # Head: rows 7 ("head") and 8 ("heads", plural) of 5 Head rows; Abdomen: row 10 of 5.
    assert q.leakage["Head"]["n"] == 5 and q.leakage["Head"]["rows"] == [7, 8]
    assert q.leakage["Head"]["fraction"] == pytest.approx(0.4)
    assert set(q.leakage["Head"]["words"]) == {"head", "heads"}
    assert q.leakage["Abdomen"]["fraction"] == pytest.approx(0.2)
    assert q.leakage["Chest"]["n_leaking"] == 0
    assert q.leaking_classes == ["Abdomen", "Head"]
    # a prompt-set synonym counts too: "lungs" names Chest
    q2 = text_quality(_rows(), {"Chest": ["lung"]})
    assert q2.leakage["Chest"]["rows"] == [12]


def test_masking_replaces_whole_words_only():
    phrases = label_phrases("rolled-in_scale", ["scale"])
    text = "Rolled-in scale and scales on a scaled plate"
    assert mask_label_words(text, phrases) == f"{MASK} and {MASK} on a scaled plate"
    assert label_phrases("scratches")[0] in {("scratch",), ("scratches",), ("scratcheses",)}
    assert "scratch" in mask_label_words("one scratch", []) and MASK in mask_label_words(
        "one scratch", label_phrases("scratches")
    )


def test_clean_texts_are_not_flagged():
    rows = [
        _row(1, "a steel plate with two long marks", "scratch"),
        _row(2, "a smooth surface with a dark spot", "pit"),
    ]
    q = text_quality(rows)
    assert not q.flagged and q.placeholder == [] and q.leaking_classes == []


def _manifest(tmp: Path) -> Path:
    from PIL import Image

    (tmp / "img").mkdir()
    lines = ["image,text,label,split"]
    for r in _rows():
        Image.new("RGB", (8, 8)).save(tmp / "img" / r.image)
        lines.append(f'img/{r.image},"{r.text}",{r.label[0]},test')
    path = tmp / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_validate_and_stats_flag_a_placeholder_manifest(tmp_path, capsys):
    from domainclip.cli import main

    path = _manifest(tmp_path)
    assert main(["data", "validate", str(path), "--backbone", "none", "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "placeholder or very short texts (< 3 words): 7 rows (1, 2, 3, 4, 5, 6, 11)" in out
    assert "texts shared across classes: 1" in out
    assert "label leakage: 2 of 5 'Head' texts (40%)" in out
    saved = json.loads((tmp_path / "v.json").read_text())["text_quality"]
    assert saved["placeholder"] == [1, 2, 3, 4, 5, 6, 11] and saved["flagged"] is True
    assert main(["data", "stats", str(path), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "repeated text in 6 rows (1, 2, 3, 4, 5, 6)" in out
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["text_quality"]["leakage"]["Abdomen"]["rows"] == [10]


def test_age_binned_in_decades_and_configurable():
    ages = ["34", "38", "41", "49", "50", "", "72"]
    assert subgroup_values("Age", ages) == ["30-39", "30-39", "40-49", "40-49", "50-59", "", "70-79"]
    assert subgroup_values("age", ages, {"age": 20}) == [
        "20-39", "20-39", "40-59", "40-59", "40-59", "", "60-79"
    ]
    assert subgroup_values("age", ["34.5", "41"]) == ["[30, 40)", "[40, 50)"]
    # a numeric column with many values gets a round width; a small categorical one is kept
    bmi = [str(18 + i) for i in range(20)]
    assert len(set(subgroup_values("bmi", bmi))) <= 12
    assert subgroup_values("view", ["PA", "AP"]) == ["PA", "AP"]
    assert parse_bin_columns(["age=5"]) == {"age": 5.0}
    with pytest.raises(ConfigError, match="COLUMN=WIDTH"):
        parse_bin_columns(["age"])


def test_age_becomes_an_evaluation_subgroup_binned():
    from domainclip.evaluation.evaluate import auto_subgroup_columns

    rows = [
        ManifestRow(image=f"{i}.png", text="t", meta={"age": str(20 + 3 * i), "sex": "MF"[i % 2]})
        for i in range(20)
    ]
    assert auto_subgroup_columns(rows) == ["age", "sex"]  # 20 distinct ages: binned, not dropped
