"""Reliability: manifests that are malformed, oddly encoded or point at odd places.

Each case writes one manifest (bytes, so encodings are exact) beside two small readable images and
runs `data validate --backbone none --json`: a file-level problem is an error naming the file
(exit 1, NOT USABLE), a row-level problem is a counted skip or warning naming the row, and the
JSON report's counts are asserted. A few cases go through `data stats` and `evaluate` too, which
read the same manifest code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, Outcome, run_case


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


HEADER = b"image,text,label,split\n"
GOOD = b"a.png,a pit on metal,pit,test\nb.png,a clean surface,clean,test\n"


def _images(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (200, 40, 40)).save(d / "a.png")
    Image.new("RGB", (16, 12), (40, 40, 200)).save(d / "b.png")


def _report(tmp: Path) -> dict:
    return json.loads((tmp / "r.json").read_text())


def counts(usable: int, skips: dict[str, list[int]] | None = None, warn: dict | None = None):
    """Check on the JSON report: usable rows, exact skip kinds/rows, warning kinds/rows present."""

    def check(tmp: Path, out: Outcome) -> None:
        r = _report(tmp)
        assert r["n_usable"] == usable, r
        assert r["skips"] == (skips or {}), r["skips"]
        for kind, rows in (warn or {}).items():
            assert r["warnings"].get(kind) == rows, r["warnings"]

    return check


def error_only(tmp: Path, out: Outcome) -> None:
    r = _report(tmp)
    assert r["n_usable"] == 0 and r["errors"] and not r["ok"], r
    assert "Traceback" not in " ".join(r["errors"])


def validate(name: str, content: bytes, suffix: str = ".csv"):
    """argv builder: write `content` as the manifest (beside a.png, b.png) and validate it."""

    def build(tmp: Path) -> list[str]:
        d = tmp / "data"
        _images(d)
        (d / f"{name}{suffix}").write_bytes(content)
        return [
            "data",
            "validate",
            d / f"{name}{suffix}",
            "--backbone",
            "none",
            "--json",
            tmp / "r.json",
        ]

    return build


def _outside(tmp: Path) -> list[str]:
    """A `..` row (a file beside the manifest's folder) and an absolute path to a non-image."""
    d = tmp / "data"
    _images(d)
    Image.new("RGB", (8, 8)).save(tmp / "beside.png")
    (tmp / "secret.txt").write_text("not an image\n")
    body = HEADER + GOOD + f"../beside.png,x,pit,test\n{tmp / 'secret.txt'},y,pit,test\n".encode()
    (d / "m.csv").write_bytes(body)
    return ["data", "validate", d / "m.csv", "--backbone", "none", "--json", tmp / "r.json"]


def _manifest_is_dir(tmp: Path) -> list[str]:
    (tmp / "m.csv").mkdir()
    return ["data", "validate", tmp / "m.csv", "--backbone", "none", "--json", tmp / "r.json"]


def _manifest_loop(tmp: Path) -> list[str]:
    (tmp / "m.csv").symlink_to("m.csv")
    return ["data", "validate", tmp / "m.csv", "--backbone", "none", "--json", tmp / "r.json"]


UTF16_BODY = (HEADER + GOOD).decode()
LONG_FIELD = b"a.png," + b"x" * 200_000 + b",pit,test\n"

CASES = [
    # --- file-level problems: an error naming the file, exit 1 ---------------------------------
    Case(
        "missing_columns",
        validate("m", b"path,caption\na.png,x\n"),
        r"missing required column\(s\) image, text.*rename column 'path' to 'image'",
        1,
        error_only,
    ),
    Case(
        "duplicate_columns",
        validate("m", b"image,text,text\na.png,x,y\n"),
        r"m\.csv: duplicate column name\(s\) text",
        1,
        error_only,
    ),
    Case(
        "duplicate_columns_case",
        validate("m", b"image,Image,text\na.png,b.png,x\n"),
        r"duplicate column name\(s\) image",
        1,
        error_only,
    ),
    Case(
        "empty_file",
        validate("m", b""),
        r"m\.csv: missing required column\(s\).*Found columns: \(none\)",
        1,
        error_only,
    ),
    Case(
        "header_only",
        validate("m", HEADER),
        r"0 usable.*NOT USABLE \(no usable row\)",
        1,
        counts(0),
    ),
    Case(
        "unknown_split",
        validate("m", HEADER + b"a.png,x,pit,holdout\nb.png,y,pit,train\n"),
        r"unknown split name\(s\) at row 1 \(line 2\): 'holdout'.*Allowed: train, val, test",
        1,
        error_only,
    ),
    Case(
        "manifest_missing",
        lambda t: [
            "data",
            "validate",
            t / "nope.csv",
            "--backbone",
            "none",
            "--json",
            t / "r.json",
        ],
        r"manifest not found: .*nope\.csv",
        1,
        error_only,
    ),
    Case("manifest_is_directory", _manifest_is_dir, r"manifest not found: .*m\.csv", 1, error_only),
    Case("manifest_symlink_loop", _manifest_loop, r"manifest not found: .*m\.csv", 1, error_only),
    Case(
        "png_named_csv",
        validate("m", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)),
        r"m\.csv: missing required column",
        1,
        error_only,
    ),
    Case(
        "field_over_csv_limit",
        validate("m", HEADER + LONG_FIELD),
        r"m\.csv: malformed CSV near line \d+: field larger than field limit",
        1,
        error_only,
    ),
    Case(
        "jsonl_key_absent_everywhere",
        validate("m", b'{"image": "a.png", "caption": "x"}\n', ".jsonl"),
        r"missing required column\(s\) text.*rename column 'caption' to 'text'",
        1,
        error_only,
    ),
    # --- encodings: decoded correctly (the header is found), the rows are usable --------------
    Case(
        "utf8_bom",
        validate("m", b"\xef\xbb\xbf" + HEADER + GOOD),
        r"2 usable.*USABLE",
        0,
        counts(2),
    ),
    Case(
        "utf16_bom", validate("m", UTF16_BODY.encode("utf-16")), r"2 usable.*USABLE", 0, counts(2)
    ),
    Case(
        "utf16_le_without_bom",
        validate("m", UTF16_BODY.encode("utf-16-le")),
        r"2 usable.*USABLE",
        0,
        counts(2),
    ),
    Case(
        "utf16_be_without_bom",
        validate("m", UTF16_BODY.encode("utf-16-be")),
        r"2 usable.*USABLE",
        0,
        counts(2),
    ),
    Case(
        "latin1",
        validate("m", HEADER + "a.png,Läsion im Blech,pit,test\n".encode("latin-1")),
        r"1 usable.*USABLE",
        0,
        counts(1),
    ),
    Case(
        "crlf_lines",
        validate("m", (HEADER + GOOD).replace(b"\n", b"\r\n")),
        r"2 usable",
        0,
        counts(2),
    ),
    # --- row-level problems: counted skips / warnings naming the row ---------------------------
    Case(
        "nul_byte_in_text",
        validate("m", HEADER + GOOD + b"a.png,a pit\x00 on metal,pit,test\n"),
        r"nul_byte: 1 \(rows 3\).*USABLE",
        0,
        counts(2, {"nul_byte": [3]}),
    ),
    Case(
        "nan_label",
        validate("m", HEADER + GOOD + b"a.png,a pit,NaN,test\nb.png,b,nan,test\n"),
        r"label_missing_value: 2 \(rows 3, 4\).*'NaN' is a missing-value marker",
        0,
        counts(4, warn={"label_missing_value": [3, 4]}),
    ),
    Case(
        "na_labels_other_spellings",
        validate("m", HEADER + b"a.png,a,N/A,test\nb.png,b,#N/A,test\n"),
        r"label_missing_value: 2",
        0,
        counts(2, warn={"label_missing_value": [1, 2]}),
    ),
    Case(
        "empty_text",
        validate("m", HEADER + GOOD + b"a.png,   ,pit,test\n"),
        r"empty_text: 1 \(rows 3\)",
        0,
        counts(2, {"empty_text": [3]}),
    ),
    Case(
        "empty_image_path",
        validate("m", HEADER + GOOD + b",a pit,pit,test\n"),
        r"missing_image_path: 1 \(rows 3\)",
        0,
        counts(2, {"missing_image_path": [3]}),
    ),
    Case(
        "duplicate_rows",
        validate("m", HEADER + GOOD + b"a.png,a pit on metal,pit,test\n"),
        r"duplicate_image: 1 \(rows 3\).*already used in row 1",
        0,
        counts(3, warn={"duplicate_image": [3]}),
    ),
    Case(
        "ragged_rows",
        validate("m", HEADER + GOOD + b"a.png,x,pit,test,extra\nb.png,y\n"),
        r"malformed_row: 2 \(rows 3, 4\).*5 fields, header has 4",
        0,
        counts(2, {"malformed_row": [3, 4]}),
    ),
    Case(
        "all_rows_ragged",
        validate("m", HEADER + b"a.png,x\nb.png,y\n"),
        r"NOT USABLE \(no usable row\)",
        1,
        counts(0, {"malformed_row": [1, 2]}),
    ),
    Case(
        "unclosed_quote",
        validate("m", HEADER + GOOD + b'a.png,"never closed,pit,test\n'),
        r"malformed_row: 1 \(rows 3\)",
        0,
        counts(2, {"malformed_row": [3]}),
    ),
    Case(
        "rows_outside_and_absolute",
        _outside,
        r"image_not_image: 1 \(rows 4\).*secret\.txt",
        0,
        counts(3, {"image_not_image": [4]}),
    ),
    Case(
        "missing_image_file",
        validate("m", HEADER + GOOD + b"gone.png,x,pit,test\n"),
        r"image_missing: 1 \(rows 3\).*gone\.png.*not found",
        0,
        counts(2, {"image_missing": [3]}),
    ),
    Case(
        "jsonl_broken_line",
        validate(
            "m",
            b'{"image": "a.png", "text": "a pit", "split": "test"}\n{"image": "b.png", "te\n',
            ".jsonl",
        ),
        r"bad_json: 1 \(rows 2\).*invalid JSON",
        0,
        counts(1, {"bad_json": [2]}),
    ),
    Case(
        "jsonl_not_an_object",
        validate("m", b'{"image": "a.png", "text": "a pit"}\n["b.png", "x"]\n', ".jsonl"),
        r"bad_json: 1 \(rows 2\).*expected a JSON object, got list",
        0,
        counts(1, {"bad_json": [2]}),
    ),
    Case(
        "jsonl_duplicate_key",
        validate(
            "m",
            b'{"image": "a.png", "text": "a"}\n{"image": "a.png", "Image": "b.png", "text": "b"}\n',
            ".jsonl",
        ),
        r"duplicate_key: 1 \(rows 2\).*'Image' appears twice",
        0,
        counts(1, {"duplicate_key": [2]}),
    ),
    Case(
        "jsonl_label_dict",
        validate(
            "m",
            b'{"image": "a.png", "text": "a", "label": {"x": 1}}\n{"image": "b.png", "text": "b"}\n',
            ".jsonl",
        ),
        r"bad_label: 1 \(rows 1\)",
        0,
        counts(1, {"bad_label": [1]}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate(case: Case, tmp_path: Path, capsys) -> None:
    run_case(case, tmp_path, capsys)


def test_stats_reads_a_bomless_utf16_manifest(tmp_path: Path, capsys) -> None:
    def build(tmp: Path) -> list[str]:
        _images(tmp)
        (tmp / "m.csv").write_bytes(UTF16_BODY.encode("utf-16-le"))
        return ["data", "stats", tmp / "m.csv"]

    run_case(Case("stats/utf16_le_without_bom", build, r"test.*2", code=0), tmp_path, capsys)


def test_evaluate_skips_and_counts_bad_rows(backbone: Path, tmp_path: Path, capsys) -> None:
    """NaN label, NUL byte, ragged row and a missing image in an evaluated split: the NaN row is
    unlabelled (never a class 'NaN'), the others are counted, the numbers use the two good rows."""

    def build(tmp: Path) -> list[str]:
        _images(tmp)
        (tmp / "p.yaml").write_text(
            'version: "rel-1"\nmode: single_label\ntemplates: ["a photo of {label}"]\n'
            'classes:\n  pit: {names: ["a pit"]}\n  clean: {names: ["a clean surface"]}\n'
        )
        bad = b"a.png,x,NaN,test\nb.png,a\x00b,pit,test\na.png,x,pit,test,extra\ngone.png,x,pit,test\n"
        (tmp / "m.csv").write_bytes(HEADER + GOOD + bad)
        return [
            "evaluate",
            backbone,
            "--data",
            tmp / "m.csv",
            "--prompts",
            tmp / "p.yaml",
            "--out",
            tmp / "ev",
            "--n-boot",
            "0",
            "--no-shortcut-check",
            "--skip-uncovered",
        ]

    def check(tmp: Path, out: Outcome) -> None:
        metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
        assert metrics["data"]["n_unreadable"] == 1
        assert metrics["data"]["n_evaluated"] == 2
        assert (
            "NaN" not in json.dumps(metrics["classification"])
            and "NaN" not in metrics["prompts"]["classes"]
        )
        preds = (tmp / "ev" / "predictions.csv").read_text()
        assert "gone.png" not in preds and ",NaN," not in preds

    run_case(
        Case("evaluate/bad_rows", build, r"2 images of split test", code=0, check=check),
        tmp_path,
        capsys,
    )
