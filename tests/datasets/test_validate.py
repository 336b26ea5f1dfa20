"""validate_manifest: every row checked, problems counted with row numbers, usable vs not."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.manifest import ManifestRow, write_manifest
from domainclip.datasets.validate import validate_manifest
from tests.datasets.helpers import PATIENT_NAME, make_dicom, save_rgb, write_csv


@pytest.fixture(scope="module")
def clip_tokenizer():
    """open_clip's real BPE tokenizer (context 77) behind domainclip's tokenizer interface."""
    from open_clip.tokenizer import SimpleTokenizer

    from domainclip.models.tokenizer import TextTokenizer

    return TextTokenizer(SimpleTokenizer(context_length=77), "open_clip", 77, trim=False)


@pytest.fixture
def messy(tmp_path):
    """A manifest with one row per bad-input case (plus good rows)."""
    img = tmp_path / "img"
    save_rgb(img / "ok1.png")
    save_rgb(img / "ok2.jpg")
    (img / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG"
    )
    (img / "cut.jpg").write_bytes(buf.getvalue()[:400])
    (img / "html.png").write_text("<html>not an image</html>")
    make_dicom(img / "sr.dcm", None)
    make_dicom(img / "xray.dcm", np.arange(16).reshape(4, 4) * 100, photometric="MONOCHROME1")
    rows = [
        ManifestRow("img/ok1.png", "a small scratch", ["scratch"], "g1", "train"),  # 1
        ManifestRow("img/ok2.jpg", "word " * 120, ["pit"], "g2", "val"),  # 2 over-long
        ManifestRow("img/missing.png", "t", ["pit"], "g3", "train"),  # 3
        ManifestRow("img/empty.png", "t", ["pit"], "g4", "train"),  # 4
        ManifestRow("img/cut.jpg", "t", ["pit"], "g5", "train"),  # 5
        ManifestRow("img/html.png", "t", ["pit"], "g6", "train"),  # 6
        ManifestRow("img/sr.dcm", "t", ["pit"], "g7", "train"),  # 7
        ManifestRow("img/xray.dcm", "t", ["pit"], "g8", "test"),  # 8
        ManifestRow("img/ok1.png", "second caption", ["scratch"], "g1", "train"),  # 9 duplicate
    ]
    path = write_manifest(rows, tmp_path / "m.csv")
    # add an empty-text row by hand (write_manifest would keep it, the reader skips it)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("img/ok1.png,,scratch,g1,train\n")  # row 10
    return path


def test_every_bad_row_counted_with_reason_and_row(messy, clip_tokenizer):
    rep = validate_manifest(messy, clip_tokenizer)
    assert rep.n_rows == 10 and rep.n_usable == 4 and rep.n_skipped == 6
    assert rep.skips == {
        "image_missing": [3],
        "image_empty": [4],
        "image_truncated": [5],
        "image_not_image": [6],
        "image_no_pixel_data": [7],
        "empty_text": [10],
    }
    # row 10 repeats ok1.png too, but it is skipped (empty text) so only row 9 is a duplicate
    assert rep.warnings == {"text_truncated": [2], "duplicate_image": [9]}
    assert rep.split_counts == {"train": 2, "val": 1, "test": 1}
    assert rep.ok and rep.errors == []
    assert any("missing.png" in m for m in rep.examples["image_missing"])
    assert "122 tokens" in rep.examples["text_truncated"][0]
    assert PATIENT_NAME not in json.dumps(rep.to_dict())


def test_format_summary(messy, clip_tokenizer):
    text = validate_manifest(messy, clip_tokenizer).format()
    assert "rows: 10 in file, 4 usable, 6 skipped" in text
    assert "image_truncated: 1 (rows 5)" in text and "cut.jpg" in text
    assert "text_truncated: 1 (rows 2)" in text and "the rest will be truncated" in text
    assert "splits (usable rows): train 2, val 1, test 1" in text
    assert "checked against 77 tokens" in text
    assert text.splitlines()[-1] == "result: USABLE (skipped rows are left out)"


def test_without_tokenizer_or_image_decoding(messy):
    rep = validate_manifest(messy, check_images=False)
    # only existence is checked: the missing file is skipped, unreadable files pass
    assert rep.skips == {"image_missing": [3], "empty_text": [10]}
    assert "text_truncated" not in rep.warnings and not rep.checked_tokens
    assert "images NOT checked" in rep.format() and "NOT checked (no tokenizer)" in rep.format()


def test_group_spanning_splits_makes_manifest_not_ok(tmp_path):
    save_rgb(tmp_path / "a.png")
    save_rgb(tmp_path / "b.png")
    path = write_manifest(
        [
            ManifestRow("a.png", "t", group="patient7", split="train"),
            ManifestRow("b.png", "t", group="patient7", split="test"),
        ],
        tmp_path / "m.csv",
    )
    rep = validate_manifest(path)
    assert rep.n_usable == 2 and not rep.ok
    assert "'patient7' is in test (row 2) and train (row 1)" in rep.errors[0]
    assert "result: NOT USABLE (errors above)" in rep.format()


def test_missing_column_and_unknown_split_are_errors(tmp_path):
    rep = validate_manifest(write_csv(tmp_path / "a.csv", "path,text\nx.png,t\n"))
    assert not rep.ok and "Found columns: path, text" in rep.errors[0]
    rep = validate_manifest(write_csv(tmp_path / "b.csv", "image,text,split\nx.png,t,holdout\n"))
    assert not rep.ok and "row 1 (line 2): 'holdout'" in rep.errors[0]
    rep = validate_manifest(tmp_path / "nope.csv")
    assert not rep.ok and "manifest not found" in rep.errors[0]


def test_no_usable_row_is_not_ok(tmp_path):
    rep = validate_manifest(write_csv(tmp_path / "m.csv", "image,text\nmissing.png,t\n"))
    assert rep.n_usable == 0 and not rep.ok
    assert rep.format().endswith("result: NOT USABLE (no usable row)")


def test_latin1_and_bom_manifests_validate(tmp_path):
    save_rgb(tmp_path / "a.png")
    for name, kw in (("l.csv", {"encoding": "latin-1"}), ("b.csv", {"bom": True})):
        rep = validate_manifest(write_csv(tmp_path / name, "image,text\na.png,Röntgen\n", **kw))
        assert rep.ok and rep.n_usable == 1


def test_unassigned_split_mask_and_boxes_checked(tmp_path):
    save_rgb(tmp_path / "a.png")
    Image.new("L", (8, 6), 0).save(tmp_path / "a_mask.png")
    rows = [
        ManifestRow("a.png", "t", meta={"mask": "a_mask.png", "boxes": '[[1, 1, 4, 5, "pit"]]'}),
        ManifestRow("a.png", "u", meta={"mask": "gone.png", "boxes": '[[4, 1, 1, 5, "pit"]]'}),
        ManifestRow("a.png", "v", meta={"mask": "", "boxes": "not json"}),
    ]
    rep = validate_manifest(write_manifest(rows, tmp_path / "m.csv"))
    assert rep.ok and rep.n_usable == 3
    assert rep.warnings["no_split"] == [1, 2, 3]
    assert rep.warnings["mask_unreadable"] == [2]
    assert rep.warnings["bad_boxes"] == [2, 3]
    assert any("max < min" in m for m in rep.examples["bad_boxes"])


def test_to_dict_is_json(messy):
    d = json.loads(json.dumps(validate_manifest(messy, check_images=False).to_dict()))
    assert d["ok"] is True and d["n_skipped"] == 2 and d["skips"]["image_missing"] == [3]


def test_a_symlink_loop_is_a_counted_skip_not_a_traceback(tmp_path):
    from domainclip.datasets.manifest import read_manifest
    from domainclip.datasets.torch_dataset import PairedDataset

    save_rgb(tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    man = write_csv(
        tmp_path / "m.csv",
        "image,text,label,split\ngood.png,a scratch,scratch,train\nloop.png,a pit,pit,train\n",
    )
    manifest = read_manifest(man)
    assert manifest.image_path(manifest.rows[1]) == tmp_path / "loop.png"  # no RuntimeError
    rep = validate_manifest(man)
    assert rep.skips == {"image_missing": [2]}  # the second row, named and counted
    ds = PairedDataset(manifest, split="train", transform=lambda im: im)
    assert ds[1] is None and len(ds.failures) == 1  # counted, named by path


def test_the_dashboard_refuses_a_symlink_loop(tmp_path):
    from domainclip.dashboard.access import PathAccessError, resolve_inside

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(PathAccessError, match="loop"):
        resolve_inside(tmp_path, "loop")
