"""Group-aware split assignment and the leakage check."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import pytest

from domainclip.datasets.manifest import ManifestRow
from domainclip.datasets.splits import assert_no_leakage, assign_splits, check_leakage
from domainclip.errors import ConfigError, DataError


def _rows(n_groups: int = 40, per_group: int = 3, labels=("a", "b")) -> list[ManifestRow]:
    rows = []
    for g in range(n_groups):
        for _ in range(per_group):
            i = len(rows) + 1
            rows.append(
                ManifestRow(
                    f"img{i}.png",
                    f"text {i}",
                    [labels[g % len(labels)]],
                    f"p{g}",
                    row=i,
                    line=i + 1,
                )
            )
    return rows


def _groups_per_split(rows):
    out = defaultdict(set)
    for r in rows:
        out[r.split].add(r.group)
    return out


def test_groups_never_split_and_fractions_respected():
    out = assign_splits(_rows(), val_frac=0.2, test_frac=0.25, seed=0)
    assert check_leakage(out) == []
    gps = _groups_per_split(out)
    # 40 groups: test 25% = 10; val 20% of all = 8 of the remaining 30; train the other 22
    assert (len(gps["train"]), len(gps["val"]), len(gps["test"])) == (22, 8, 10)


def test_stratified_by_first_label():
    out = assign_splits(_rows(labels=("a", "b")), val_frac=0.2, test_frac=0.2, seed=3)
    for split in ("train", "val", "test"):
        c = Counter(r.label[0] for r in out if r.split == split)
        assert c["a"] == c["b"], (split, c)


def test_reproducible_and_seed_dependent():
    rows = _rows()
    a = [r.split for r in assign_splits(rows, 0.2, 0.2, seed=1)]
    b = [r.split for r in assign_splits(list(reversed(rows)), 0.2, 0.2, seed=1)]
    assert a == list(reversed(b))  # depends on the groups and seed, not the row order
    c = [r.split for r in assign_splits(rows, 0.2, 0.2, seed=2)]
    assert a != c


def test_input_rows_not_modified():
    rows = _rows(10)
    assign_splits(rows, 0.2, 0.2)
    assert {r.split for r in rows} == {"unassigned"}


def test_existing_splits_kept_and_group_members_follow():
    rows = _rows(20)
    rows[0].split = "test"  # first row of group p0
    rows[4].split = "val"  # second row of group p1
    out = assign_splits(rows, 0.2, 0.2, seed=0)
    assert {r.split for r in out if r.group == "p0"} == {"test"}
    assert {r.split for r in out if r.group == "p1"} == {"val"}
    assert check_leakage(out) == []
    over = assign_splits(out, 0.0, 0.0, seed=0, overwrite=True)
    assert {r.split for r in over} == {"train"}


def test_falls_back_when_stratification_impossible(caplog):
    rows = _rows(10, labels=("a",) * 9 + ("rare",))
    with caplog.at_level(logging.INFO):
        out = assign_splits(rows, 0.2, 0.2, seed=0)
    assert "not stratified: fewer than two labels have two or more groups" in caplog.text
    assert check_leakage(out) == []
    assert {r.split for r in out} == {"train", "val", "test"}


def test_rare_labels_pooled_instead_of_giving_up_stratification(caplog):
    # 30 groups of "a", 10 of "b", and three labels with one group each (like the COVID data).
    rows = _rows(43, per_group=1, labels=["a"] * 3 + ["b"])
    for r, lab in zip(rows[-3:], ["x", "y", "z"], strict=True):
        r.label = [lab]
    with caplog.at_level(logging.INFO):
        out = assign_splits(rows, 0.2, 0.2, seed=0)
    assert "3 rare labels pooled" in caplog.text and "not stratified" not in caplog.text
    for split in ("val", "test"):
        c = Counter(r.label[0] for r in out if r.split == split)
        # 8-9 groups per split: a:b stays near 3:1, so b gets 2 (never 0 or 4+)
        assert c["b"] == 2, (split, c)


def test_rows_without_group_are_their_own_group():
    rows = [ManifestRow(f"i{i}.png", "t", ["x"], group="", row=i) for i in range(1, 21)]
    out = assign_splits(rows, 0.25, 0.25, seed=0)
    assert Counter(r.split for r in out) == {"train": 10, "val": 5, "test": 5}


def test_tiny_datasets():
    one = assign_splits([ManifestRow("a.png", "t", group="g")], 0.1, 0.1)
    assert one[0].split == "train"
    three = assign_splits([ManifestRow(f"{i}.png", "t", group=f"g{i}") for i in range(3)], 0.1, 0.1)
    assert sorted(r.split for r in three) == ["test", "train", "val"]


def test_bad_fractions():
    with pytest.raises(ConfigError, match="below 1"):
        assign_splits(_rows(), 0.5, 0.5)
    with pytest.raises(ConfigError, match="test_frac"):
        assign_splits(_rows(), 0.1, -0.1)


def test_group_spanning_splits_detected_and_reported():
    rows = _rows(8, per_group=2)
    for i, r in enumerate(rows):
        r.split = "train" if i < 8 else "test"
    rows[1].split = "test"  # p0 now has rows in train (row 1) and test (row 2)
    problems = check_leakage(rows)
    assert [(p.kind, p.key) for p in problems] == [("group", "p0")]
    assert problems[0].rows_by_split == {"train": [1], "test": [2]}
    with pytest.raises(DataError) as err:
        assert_no_leakage(rows)
    msg = str(err.value)
    assert "'p0'" in msg and "train (row 1)" in msg and "test (row 2)" in msg and "1 group" in msg


def test_leakage_message_lists_first_few_and_count():
    rows = []
    for g in range(8):
        rows += [
            ManifestRow(f"{g}a.png", "t", group=f"g{g}", split="train", row=2 * g + 1),
            ManifestRow(f"{g}b.png", "t", group=f"g{g}", split="val", row=2 * g + 2),
        ]
    with pytest.raises(DataError, match=r"8 group\(s\).*and 3 more"):
        assert_no_leakage(rows)


def test_same_image_in_two_splits_is_leakage_even_with_different_groups():
    rows = [
        ManifestRow("x.png", "t1", group="a", split="train", row=1),
        ManifestRow("./x.png", "t2", group="b", split="test", row=2),
    ]
    problems = check_leakage(rows)
    assert [(p.kind, p.key) for p in problems] == [("image", "x.png")]


def test_unassigned_rows_are_not_leakage():
    rows = [
        ManifestRow("a.png", "t", group="g", split="train", row=1),
        ManifestRow("b.png", "t", group="g", split="unassigned", row=2),
    ]
    assert check_leakage(rows) == []
    assert_no_leakage(rows)


def test_tiny_sets_fall_back_to_unstratified_instead_of_crashing():
    """10 rows, 5 labels x 2: a 1-group test split cannot be stratified; it must still split."""
    rows = [
        ManifestRow(image=f"{i}.png", text="t", label=[f"c{i % 5}"], group=f"g{i}")
        for i in range(10)
    ]
    out = assign_splits(rows, val_frac=0.15, test_frac=0.15, seed=0)
    splits = [r.split for r in out]
    assert splits.count("test") >= 1 and splits.count("val") >= 1 and splits.count("train") >= 6


def test_calib_split_is_group_aware_and_leaves_the_rest_unchanged_at_zero():
    rows = _rows()
    out = assign_splits(rows, val_frac=0.15, test_frac=0.15, seed=0, calib_frac=0.15)
    assert check_leakage(out) == []
    gps = _groups_per_split(out)
    assert (len(gps["train"]), len(gps["val"]), len(gps["test"]), len(gps["calib"])) == (22, 6, 6, 6)
    before = [r.split for r in assign_splits(rows, 0.15, 0.15, seed=0)]
    assert [r.split for r in assign_splits(rows, 0.15, 0.15, seed=0, calib_frac=0.0)] == before
    with pytest.raises(ConfigError, match="calib_frac"):
        assign_splits(rows, 0.4, 0.3, calib_frac=0.3)


def test_carving_calib_moves_only_train_groups():
    from domainclip.datasets.splits import carve_calib

    split = assign_splits(_rows(), 0.2, 0.2, seed=0)
    carved = carve_calib(split, 0.1, seed=0)
    moved = [(a.split, b.split) for a, b in zip(split, carved, strict=True) if a.split != b.split]
    assert moved and {m for m in moved} == {("train", "calib")}
    assert len({r.group for r in carved if r.split == "calib"}) == 4  # 10% of 40 groups
    assert check_leakage(carved) == []
    with pytest.raises(DataError, match="already has a calib split"):
        carve_calib(carved, 0.1)
