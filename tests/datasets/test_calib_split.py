"""The optional `calib` split: accepted with its aliases and checked for group leakage."""

from __future__ import annotations

from domainclip.datasets.manifest import normalize_split, read_manifest
from domainclip.datasets.splits import check_leakage


def test_calib_split_and_aliases(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "image,text,group,split\na.png,t,p1,train\nb.png,t,p2,calib\nc.png,t,p3,calibration\n"
        "d.png,t,p2,val\n"
    )
    man = read_manifest(path)
    assert [r.split for r in man.rows] == ["train", "calib", "calib", "val"]
    assert normalize_split("Cal") == "calib"
    leaks = check_leakage(man.rows)
    assert [(p.kind, p.key, sorted(p.rows_by_split)) for p in leaks] == [("group", "p2", ["calib", "val"])]
