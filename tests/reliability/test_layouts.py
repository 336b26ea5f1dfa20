"""Reliability: importing layouts and splitting manifests from the command line.

Unknown layouts, masks without their image, label maps naming missing folders, `data split`
refusing to reshuffle without --force: each a clear message and exit code, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainclip.datasets.manifest import read_manifest
from tests.reliability.harness import Case, Outcome, run_case


def _png(path: Path, mask: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        arr = np.zeros((20, 30), np.uint8)
        arr[3:9, 4:12] = 255
    else:
        arr = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _classes(tmp: Path) -> Path:
    src = tmp / "src"
    for cls in ("crack", "good"):
        for i in range(4):
            _png(src / cls / "Imgs" / f"{i}.jpg", seed=i)
            if cls == "crack":
                _png(src / cls / "Imgs" / f"{i}_mask.png", mask=True)
    return src


def _mvtec(tmp: Path) -> Path:
    cat = tmp / "bottle"
    for i in range(4):
        _png(cat / "train" / "good" / f"{i:03d}.png", seed=i)
        _png(cat / "test" / "good" / f"{i:03d}.png", seed=10 + i)
        _png(cat / "test" / "contamination" / f"{i:03d}.png", seed=20 + i)
        _png(cat / "ground_truth" / "contamination" / f"{i:03d}_mask.png", mask=True)
    return cat


def _unknown_layout(tmp: Path) -> list[str]:
    return ["data", "import", "pascal", str(_classes(tmp)), "--out", str(tmp / "out")]


def _mvtec_wrong_layout(tmp: Path) -> list[str]:
    return ["data", "import", "mvtec", str(_classes(tmp)), "--out", str(tmp / "out")]


def _folder_orphan_mask(tmp: Path) -> list[str]:
    src = _classes(tmp)
    (src / "crack" / "Imgs" / "2.jpg").unlink()
    return ["data", "import", "folder", str(src), "--out", str(tmp / "out")]


def _folder_orphan_excluded(tmp: Path) -> list[str]:
    return [*_folder_orphan_mask(tmp), "--exclude", "crack/Imgs/2_mask.png"]


def _mvtec_orphan_mask(tmp: Path) -> list[str]:
    cat = _mvtec(tmp)
    (cat / "test" / "contamination" / "001.png").unlink()
    return ["data", "import", "mvtec", str(cat), "--out", str(tmp / "out")]


def _label_map_missing_folder(tmp: Path) -> list[str]:
    lm = tmp / "labels.yaml"
    lm.write_text("crack: defect\nMT_Free: good\n")
    return ["data", "import", "folder", str(_classes(tmp)), "--out", str(tmp / "out"), "--label-map", str(lm)]


def _mvtec_label_map_missing_folder(tmp: Path) -> list[str]:
    lm = tmp / "labels.yaml"
    lm.write_text("scratch: {label: scratched}\n")
    return ["data", "import", "mvtec", str(_mvtec(tmp)), "--out", str(tmp / "out"), "--label-map", str(lm)]


def _label_map_unknown_key(tmp: Path) -> list[str]:
    lm = tmp / "labels.yaml"
    lm.write_text("crack: {label: defect, wording: a crack}\n")
    return ["data", "import", "folder", str(_classes(tmp)), "--out", str(tmp / "out"), "--label-map", str(lm)]


def _imported(tmp: Path) -> Path:
    from domainclip.datasets.importers import run_import

    return run_import("folder", _classes(tmp), tmp / "out").manifest_path


def _split_again(tmp: Path) -> list[str]:
    path = _imported(tmp)
    (tmp / "before.csv").write_bytes(path.read_bytes())
    return ["data", "split", str(path)]


def _split_force(tmp: Path) -> list[str]:
    return [*_split_again(tmp), "--force", "--seed", "5", "--val-frac", "0.25", "--test-frac", "0.25"]


def _split_missing_column(tmp: Path) -> list[str]:
    return ["data", "split", str(_imported(tmp)), "--by", "patient", "--force"]


def _split_unreadable_rows(tmp: Path) -> list[str]:
    path = tmp / "m.csv"
    path.write_text("image,text\na.png,a pit\nb.png,\n")
    return ["data", "split", str(path)]


def _unchanged(tmp: Path, _: Outcome) -> None:
    assert (tmp / "out" / "manifest.csv").read_bytes() == (tmp / "before.csv").read_bytes()


def _reshuffled(tmp: Path, _: Outcome) -> None:
    rows = read_manifest(tmp / "out" / "manifest.csv").rows
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert (tmp / "out" / "manifest.csv").read_bytes() != (tmp / "before.csv").read_bytes()


def _no_manifest(tmp: Path, _: Outcome) -> None:
    assert not (tmp / "out" / "manifest.csv").exists()


def _seven_rows(tmp: Path, _: Outcome) -> None:
    assert len(read_manifest(tmp / "out" / "manifest.csv")) == 7


CASES = [
    Case("unknown layout", _unknown_layout, r"invalid choice: 'pascal'.*mvtec"),
    Case("mvtec on another layout", _mvtec_wrong_layout, r"mvtec: .*src has no train/ or test/ folder"),
    Case(
        "folder: a mask whose image is missing",
        _folder_orphan_mask,
        r"1 mask file\(s\) .* belong to no image: crack/Imgs/2_mask\.png.*--exclude",
        check=_no_manifest,
    ),
    Case("folder: the orphan mask excluded", _folder_orphan_excluded, r"wrote 7 rows", 0, _seven_rows),
    Case(
        "mvtec: a mask whose image is missing",
        _mvtec_orphan_mask,
        r"belong to no test image: .*contamination/001_mask\.png",
        check=_no_manifest,
    ),
    Case(
        "label map names a missing folder",
        _label_map_missing_folder,
        r"label map names folder\(s\) MT_Free that .*src does not have; folders found: crack, good",
        check=_no_manifest,
    ),
    Case(
        "mvtec label map names a missing defect folder",
        _mvtec_label_map_missing_folder,
        r"names folder\(s\) scratch .*folders found: contamination, good",
    ),
    Case("label map with an unknown key", _label_map_unknown_key, r"entry 'crack': unknown key\(s\) wording"),
    Case("split twice without --force", _split_again, r"already split .*--force", check=_unchanged),
    Case("split --force reassigns", _split_force, r"leakage check: passed.*wrote", 0, _reshuffled),
    Case("split --by a missing column", _split_missing_column, r"--by 'patient' is not a column"),
    Case("split a manifest with unreadable rows", _split_unreadable_rows, r"row 2 .*empty text.*would\s+drop"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layout_cases(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, tmp_path, capsys)
