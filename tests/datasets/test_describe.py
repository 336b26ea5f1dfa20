"""Descriptions written from class names and boxes: count, size, elongation, position."""

from __future__ import annotations

import itertools

import pytest

from domainclip.datasets.describe import (
    count_word,
    describe_boxes,
    describe_objects,
    noun_for,
    position_phrase,
)

W = H = 200


def _box(cx: int, cy: int, half: int = 5) -> tuple[int, int, int, int]:
    return (cx - half, cy - half, cx + half, cy + half)


def test_examples_from_the_brief():
    assert (
        describe_boxes("scratches", [(10, 5, 20, 90), (30, 8, 40, 95)], W, H)
        == "two long scratches in the upper left of a steel surface"
    )
    assert (
        describe_boxes("patches", [(2, 2, 190, 195)], W, H)
        == "a large patch covering most of a steel surface"
    )
    pits = [_box(20, 20, 3), _box(100, 100, 3), _box(180, 30, 3)]
    assert (
        describe_boxes("pit", pits, W, H, surface="metal surface")
        == "three small pits spread across a metal surface"
    )


@pytest.mark.parametrize(
    ("cx", "cy", "name"),
    [
        (10, 10, "upper left"),
        (100, 10, "top centre"),
        (190, 10, "upper right"),
        (10, 100, "left side"),
        (100, 100, "centre"),
        (190, 100, "right side"),
        (10, 190, "lower left"),
        (100, 190, "bottom centre"),
        (190, 190, "lower right"),
        (200, 200, "lower right"),  # the far edge belongs to the last cell, not a 4th one
    ],
)
def test_position_phrase_grid(cx, cy, name):
    assert position_phrase(cx, cy, W, H) == name


def test_position_phrase_uses_width_and_height_separately():
    # 300 x 90 image: x = 250 is the right third, y = 20 the top third.
    assert position_phrase(250, 20, 300, 90) == "upper right"
    with pytest.raises(ValueError):
        position_phrase(1, 1, 0, 10)


@pytest.mark.parametrize(
    ("cx", "cy", "phrase"),
    [
        (20, 20, "in the upper left of"),
        (100, 20, "at the top centre of"),
        (20, 100, "on the left side of"),
        (100, 100, "in the centre of"),
        (180, 180, "in the lower right of"),
    ],
)
def test_single_box_position_in_sentence(cx, cy, phrase):
    text = describe_boxes("inclusion", [_box(cx, cy)], W, H)
    assert text == f"a small inclusion {phrase} a steel surface"


def test_counts_are_words_up_to_nine_then_many():
    assert [count_word(i) for i in (1, 2, 9, 10, 42)] == ["one", "two", "nine", "many", "many"]
    boxes = [_box(15 + 7 * i, 15) for i in range(12)]  # twelve small boxes in the top row
    assert describe_boxes("pit", boxes[:4], W, H).startswith("four small pits ")
    assert describe_boxes("pit", boxes, W, H).startswith("many small pits ")


def test_sizes_follow_area_fraction():
    assert describe_boxes("inclusion", [_box(100, 100, 10)], W, H).startswith("a small ")
    assert describe_boxes("inclusion", [_box(100, 100, 30)], W, H).startswith("a medium ")
    assert describe_boxes("inclusion", [_box(100, 100, 60)], W, H).startswith("a large ")


def test_line_like_classes_are_described_by_length():
    long_vertical = (95, 10, 100, 190)
    assert describe_boxes("scratch", [long_vertical], W, H).startswith("a long scratch ")
    short_thin = (95, 90, 98, 120)
    assert describe_boxes("crack", [short_thin], W, H).startswith("a short crack ")
    # The same thin box for a blob-like class is just small.
    assert describe_boxes("inclusion", [short_thin], W, H).startswith("a small inclusion ")
    # A diagonal scratch fills its box but is not "covering most" of the surface.
    assert describe_boxes("scratches", [(0, 0, 200, 200)], W, H) == (
        "a long scratch running across a steel surface"
    )


def test_rows_columns_and_spread():
    top = [_box(20, 20), _box(100, 25)]
    assert "along the top of" in describe_boxes("inclusion", top, W, H)
    left = [_box(20, 20), _box(25, 180)]
    assert "down the left side of" in describe_boxes("inclusion", left, W, H)
    wide_band = [(5, 90, 195, 110)]
    assert "across the middle of" in describe_boxes("rolled-in_scale", wide_band, W, H)
    scattered = [_box(20, 20), _box(180, 180), _box(100, 100)]
    assert "spread across a steel surface" in describe_boxes("inclusion", scattered, W, H)


def test_mass_nouns_are_not_counted_as_objects():
    assert describe_boxes("crazing", [(2, 2, 198, 198)], W, H) == (
        "fine crazing covering most of a steel surface"
    )
    two = describe_boxes("crazing", [_box(30, 30, 20), _box(170, 170, 20)], W, H)
    assert two == "two medium areas of fine crazing spread across a steel surface"
    assert describe_boxes("rolled-in_scale", [_box(30, 170, 10)], W, H) == (
        "a small area of rolled-in scale in the lower left of a steel surface"
    )


def test_class_nouns():
    assert noun_for("pitted_surface").plural == "pitted areas"
    assert noun_for("patches").singular == "patch"
    assert noun_for("scratches").plural == "scratches"
    assert noun_for("weld_spatter").singular == "weld spatter"
    assert describe_boxes("pitted_surface", [_box(20, 20), _box(30, 30)], W, H) == (
        "two small pitted areas in the upper left of a steel surface"
    )


def test_box_order_does_not_change_the_text():
    boxes = [_box(20, 20, 5), _box(100, 100, 25), _box(180, 40, 5), _box(60, 170, 25)]
    texts = {describe_boxes("inclusion", list(p), W, H) for p in itertools.permutations(boxes)}
    assert len(texts) == 1


def test_several_classes_in_one_sentence_primary_first():
    objects = [
        ("inclusion", _box(100, 100)),
        ("patches", (0, 80, 50, 140)),
        ("patches", (0, 70, 40, 120)),
    ]
    assert describe_objects(objects, W, H, primary="patches") == (
        "two medium patches on the left side and a small inclusion in the centre of a steel surface"
    )
    single = describe_objects([("scratch", (95, 10, 100, 190))], W, H)
    assert single == describe_boxes("scratch", [(95, 10, 100, 190)], W, H)


@pytest.mark.parametrize(
    ("boxes", "w", "h"),
    [([], W, H), ([(10, 10, 10, 20)], W, H), ([(10, 10, 20, 20)], 0, H), ([(1, 2, 3)], W, H)],
)
def test_bad_input_raises_value_error(boxes, w, h):
    with pytest.raises(ValueError):
        describe_boxes("patches", boxes, w, h)
