"""Manifest reading/writing: round trips and every malformed-input case of issue 2."""

from __future__ import annotations

import json
import logging

import pytest

from domainclip.datasets.manifest import (
    ManifestRow,
    normalize_split,
    parse_label,
    read_manifest,
    write_manifest,
)
from domainclip.errors import DataError
from tests.datasets.helpers import write_csv

ROWS = [
    ManifestRow(
        "img/a.png", "two long scratches, upper left", ["scratch"], "lot1", "train", {"view": "top"}
    ),
    ManifestRow("img/b.png", 'multi\nline "quoted" text – naïve', ["pit", "crack"], "lot2", "val"),
    ManifestRow("img/c.png", "no labels", [], "lot3", "test", {"boxes": '[[1, 2, 3, 4, "pit"]]'}),
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip(tmp_path, suffix):
    path = write_manifest(ROWS, tmp_path / f"m{suffix}")
    m = read_manifest(path)
    assert m.problems == [] and m.n_data_rows == 3 and m.root == tmp_path.resolve()
    for got, want in zip(m.rows, ROWS, strict=True):
        assert (got.image, got.text, got.label, got.group, got.split) == (
            want.image,
            want.text,
            want.label,
            want.group,
            want.split,
        )
        # every meta key of the file is present (empty where a row had none)
        assert {k: v for k, v in got.meta.items() if v} == want.meta
    assert m.image_path(m.rows[0]) == (tmp_path / "img" / "a.png").resolve()


def test_csv_layout_and_line_numbers(tmp_path):
    path = write_manifest(ROWS, tmp_path / "m.csv")
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "image,text,label,group,split,view,boxes"
    m = read_manifest(path)
    assert [(r.row, r.line) for r in m.rows] == [(1, 2), (2, 3), (3, 5)]  # row 2 spans 2 lines
    assert "pit|crack" in path.read_text(encoding="utf-8")


def test_write_accepts_dicts_and_extra_keys_become_meta(tmp_path):
    path = write_manifest(
        [{"image": "x.png", "text": "t", "label": "a|b", "sex": "F", "meta": {"age": 40}}],
        tmp_path / "m.jsonl",
    )
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert rec["label"] == ["a", "b"] and rec["sex"] == "F" and rec["age"] == "40"
    assert rec["split"] == "unassigned"


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = write_manifest(ROWS, tmp_path / "m.csv")
    before = path.read_bytes()
    bad = [*ROWS, ManifestRow("d.png", "t", split="holdout")]
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        write_manifest(bad, path)
    assert path.read_bytes() == before
    write_manifest(ROWS[:1], path)
    assert len(read_manifest(path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_write_rejects_label_with_separator_and_clashing_meta(tmp_path):
    with pytest.raises(DataError, match="contains '\\|'"):
        write_manifest([ManifestRow("a.png", "t", ["a|b"])], tmp_path / "m.csv")
    with pytest.raises(DataError, match="clash"):
        write_manifest([ManifestRow("a.png", "t", meta={"Split": "x"})], tmp_path / "m.csv")


def test_absolute_paths_inside_root_become_relative(tmp_path):
    inside = tmp_path / "out" / "img" / "a.png"
    outside = tmp_path / "elsewhere" / "b.png"
    path = write_manifest(
        [ManifestRow(str(inside), "t"), ManifestRow(str(outside), "t")], tmp_path / "out" / "m.csv"
    )
    m = read_manifest(path)
    assert m.rows[0].image == "img/a.png"
    assert m.rows[1].image == str(outside)
    assert m.image_path(m.rows[1]) == outside


# ---------------------------------------------------------------------------------------------
# Encodings


def test_utf8_bom(tmp_path):
    path = write_csv(tmp_path / "m.csv", "image,text\na.png,café\n", bom=True)
    m = read_manifest(path)
    assert m.columns == ["image", "text"] and m.rows[0].text == "café" and m.encoding == "utf-8"


def test_latin1_fallback_with_warning_naming_file(tmp_path, caplog):
    path = write_csv(
        tmp_path / "legacy.csv", "image,text\na.png,Röntgen café\n", encoding="latin-1"
    )
    with caplog.at_level(logging.WARNING):
        m = read_manifest(path)
    assert m.rows[0].text == "Röntgen café" and m.encoding == "latin-1"
    assert "legacy.csv" in caplog.text and "latin-1" in caplog.text


# ---------------------------------------------------------------------------------------------
# Structural errors


def test_missing_required_column_lists_found_and_expected(tmp_path):
    path = write_csv(tmp_path / "m.csv", "filename,caption,finding\na.png,hello,x\n")
    with pytest.raises(DataError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert "m.csv" in msg and "missing required column(s) image, text" in msg
    assert "Found columns: filename, caption, finding" in msg
    assert "Expected: image, text" in msg
    assert "rename column 'filename' to 'image'" in msg and "'caption' to 'text'" in msg


def test_empty_file_is_missing_columns(tmp_path):
    with pytest.raises(DataError, match=r"Found columns: \(none\)"):
        read_manifest(write_csv(tmp_path / "m.csv", ""))


def test_missing_manifest_file(tmp_path):
    with pytest.raises(DataError, match="manifest not found: .*nope.csv"):
        read_manifest(tmp_path / "nope.csv")


def test_header_case_and_spaces_tolerated(tmp_path):
    m = read_manifest(write_csv(tmp_path / "m.csv", " Image ,TEXT,Label\na.png,t,x\n"))
    assert m.rows[0].label == ["x"]


def test_duplicate_header_rejected(tmp_path):
    with pytest.raises(DataError, match="duplicate column name"):
        read_manifest(write_csv(tmp_path / "m.csv", "image,text,text\na.png,t,u\n"))


# ---------------------------------------------------------------------------------------------
# Row problems


def test_empty_text_skipped_and_counted_or_strict_error(tmp_path, caplog):
    path = write_csv(tmp_path / "m.csv", "image,text\na.png,hello\nb.png,   \nc.png,\nd.png,ok\n")
    with caplog.at_level(logging.WARNING):
        m = read_manifest(path)
    assert [r.image for r in m.rows] == ["a.png", "d.png"]
    assert m.skipped == {"empty_text": 2} and m.n_skipped == 2 and m.n_data_rows == 4
    assert [(p.row, p.line) for p in m.problems] == [(2, 3), (3, 4)]
    assert "b.png" in m.problems[0].message
    assert "skipped 2 of 4 rows" in caplog.text
    with pytest.raises(DataError, match=r"2 unusable row\(s\): row 2 \(line 3\): empty text"):
        read_manifest(path, strict=True)


def test_duplicate_image_paths_reported_not_dropped(tmp_path):
    path = write_csv(tmp_path / "m.csv", "image,text\na.png,one\nb.png,two\n./a.png,three\n")
    m = read_manifest(path)
    assert len(m.rows) == 3
    (w,) = m.warnings
    assert w.kind == "duplicate_image" and w.row == 3
    assert "already used in row 1" in w.message
    assert m.skipped == {}


def test_unknown_split_names_error_with_row_and_allowed(tmp_path):
    path = write_csv(
        tmp_path / "m.csv", "image,text,split\na.png,t,train\nb.png,t,trian\nc.png,t,holdout\n"
    )
    with pytest.raises(DataError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert "row 2 (line 3): 'trian'" in msg and "row 3 (line 4): 'holdout'" in msg
    assert "Allowed: train, val, test" in msg


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("valid", "val"),
        ("Validation", "val"),
        ("dev", "val"),
        (" TEST ", "test"),
        ("", "unassigned"),
    ],
)
def test_split_aliases(tmp_path, raw, canonical):
    assert normalize_split(raw) == canonical
    path = write_csv(tmp_path / "m.csv", f"image,text,split\na.png,t,{raw}\n")
    assert read_manifest(path).rows[0].split == canonical


def test_missing_optional_columns_defaults(tmp_path):
    m = read_manifest(write_csv(tmp_path / "m.csv", "image,text,view\nx/a.png,t,PA\n"))
    r = m.rows[0]
    assert r.label == [] and r.group == "x/a.png" and r.split == "unassigned"
    assert r.meta == {"view": "PA"}


def test_wrong_field_count_skipped(tmp_path):
    m = read_manifest(write_csv(tmp_path / "m.csv", "image,text\na.png,t\nb.png,t,extra\n"))
    assert len(m.rows) == 1 and m.skipped == {"malformed_row": 1}
    assert "row 2 (line 3): 3 fields, header has 2" in m.problems[0].message


def test_empty_image_path_skipped(tmp_path):
    m = read_manifest(write_csv(tmp_path / "m.csv", "image,text\n,t\nb.png,t\n"))
    assert m.skipped == {"missing_image_path": 1}


def test_blank_lines_ignored(tmp_path):
    m = read_manifest(write_csv(tmp_path / "m.csv", "image,text\n\na.png,t\n\n"))
    assert len(m.rows) == 1 and m.rows[0].line == 3 and m.n_data_rows == 1


# ---------------------------------------------------------------------------------------------
# JSONL specifics


def test_jsonl_broken_line_reported_with_row(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"image": "a.png", "text": "t"}\n{"image": "b.png", "text": \n[1, 2]\n'
        '{"image": "c.png", "text": "u", "label": ["x", "y"], "view": "PA", "n": 3}\n',
        encoding="utf-8",
    )
    m = read_manifest(path)
    assert [r.image for r in m.rows] == ["a.png", "c.png"]
    assert m.skipped == {"bad_json": 2}
    assert m.problems[0].message.startswith("row 2 (line 2): invalid JSON")
    assert "expected a JSON object" in m.problems[1].message
    assert m.rows[1].label == ["x", "y"] and m.rows[1].meta == {"view": "PA", "n": "3"}
    with pytest.raises(DataError, match="row 2 \\(line 2\\)"):
        read_manifest(path, strict=True)


def test_jsonl_missing_key_everywhere_is_missing_column(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.png", "text": "t"}\n', encoding="utf-8")
    with pytest.raises(
        DataError, match="missing required column\\(s\\) image.*Found columns: path"
    ):
        read_manifest(path)


def test_jsonl_bad_label_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "text": "t", "label": {"a": 1}}\n', encoding="utf-8")
    m = read_manifest(path)
    assert m.rows == [] and m.skipped == {"bad_label": 1}


def test_parse_label():
    assert parse_label(" a | b ||") == ["a", "b"]
    assert parse_label(["a", 3]) == ["a", "3"]
    assert parse_label(None) == [] and parse_label(2) == ["2"]
    with pytest.raises(ValueError):
        parse_label([["nested"]])


# ---------------------------------------------------------------------------------------------
# Real data: SOURCE.md calls the COVID collection's metadata.csv latin-1, but the shared copy is
# valid UTF-8 in which the non-UTF-8 bytes were already replaced by U+FFFD. It must be decoded as
# UTF-8 (latin-1 would turn "é" into "Ã©") with a warning about the lost characters.


@pytest.mark.shared
def test_real_metadata_decoding_and_columns_reported(covid_cxr_dir, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as err:
        read_manifest(covid_cxr_dir / "metadata.csv")
    assert "metadata.csv" in caplog.text and "U+FFFD" in caplog.text
    msg = str(err.value)
    assert "Found columns: patientid, offset" in msg and "clinical_notes" in msg
    assert "rename column 'filename' to 'image'" in msg


def test_replacement_characters_warned(tmp_path, caplog):
    path = write_csv(tmp_path / "m.csv", "image,text\na.png,38\ufffd6\ufffdC\n")
    with caplog.at_level(logging.WARNING):
        m = read_manifest(path)
    assert m.rows[0].text == "38\ufffd6\ufffdC" and m.encoding == "utf-8"
    assert "m.csv contains 2 U+FFFD" in caplog.text


def test_missing_value_labels_are_no_label_with_a_warning(tmp_path):
    man = write_csv(
        tmp_path / "m.csv",
        "image,text,label\na.png,t1,NaN\nb.png,t2,scratch|nan\nc.png,t3,N/A\nd.png,t4,pit\n",
    )
    m = read_manifest(man)
    assert [r.label for r in m.rows] == [[], ["scratch"], [], ["pit"]]
    warned = [p for p in m.warnings if p.kind == "label_missing_value"]
    assert [p.row for p in warned] == [1, 2, 3] and "'NaN'" in warned[0].message
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"image": "a.png", "text": "t", "label": NaN}\n')
    assert read_manifest(jl).rows[0].label == []


def test_utf16_manifest_is_read_and_nul_bytes_are_a_counted_skip(tmp_path):
    text = "image,text,label\na.png,a scratch,scratch\nb.png,a p\x00it,pit\n"
    path = tmp_path / "m.csv"
    path.write_bytes(text.encode("utf-16"))  # with BOM, as Excel's "Unicode text" writes it
    m = read_manifest(path)
    assert m.encoding == "utf-16"
    assert [r.image for r in m.rows] == ["a.png"]
    assert m.skipped == {"nul_byte": 1}
    assert "NUL byte" in m.problems[0].message and "row 2" in m.problems[0].message
