"""Subgroup values of a metadata column, with continuous columns (age, ...) binned.

Subgroup analyses (evaluation's per-subgroup ECE, the audit's per-subgroup shifts) need a few
values with enough images each. A continuous column such as age has dozens of distinct values:
it used to be dropped silently (evaluation takes 2..12 distinct values) or split into cells of
one or two images (audit). Here a numeric column is binned instead:

* a column named in `bins` (`--bin-column age=10`) is binned with that width;
* `age` (any spelling: "Age", "AGE") is binned in decades by default (`DEFAULT_BINS`);
* any other column whose non-empty values are all numbers and that has more than
  `max_values` distinct values is binned with a "nice" width (1, 2, 5 x 10^k) giving at most
  `max_values` bins.

Bins are left-closed: width 10 puts 40 and 49.5 into "40-49" (whole-number data, whole-number
width) or "[40, 50)" (otherwise). Empty values stay empty; a value that is not a number in a
binned column stays as it is (and is counted as its own subgroup), so nothing is dropped.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence

from domainclip.errors import ConfigError

DEFAULT_BINS: dict[str, float] = {"age": 10.0}
BIN_COLUMN_FLAG = "--bin-column"


def _key(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def parse_bin_columns(items: Sequence[str] | None) -> dict[str, float] | None:
    """`["age=5", "bmi=2.5"]` -> {"age": 5.0, "bmi": 2.5}; None when nothing was given.

    Raises:
        ConfigError: an item is not COLUMN=WIDTH with a positive number.
    """
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        column, sep, width = item.partition("=")
        w = _number(width.strip()) if sep else None
        if not column.strip() or w is None or w <= 0:
            raise ConfigError(
                f"{BIN_COLUMN_FLAG} {item!r}: expected COLUMN=WIDTH with a positive width, "
                "e.g. age=10 (decades) or age=5"
            )
        out[column.strip()] = w
    return out


def add_bin_column_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--bin-column COLUMN=WIDTH` (repeatable; `args.bin_column`, a list)."""
    parser.add_argument(
        BIN_COLUMN_FLAG,
        action="append",
        default=[],
        metavar="COLUMN=WIDTH",
        dest="bin_column",
        help="bin a numeric metadata column for subgroup analyses with this width (default: "
        "age=10, decades; other numeric columns with many values get a round width)",
    )


def bin_width(
    column: str,
    values: Sequence[str],
    bins: Mapping[str, float] | None = None,
    max_values: int = 12,
) -> float | None:
    """The bin width of `column` (None: its values are used as they are)."""
    wanted = {_key(k): float(v) for k, v in {**DEFAULT_BINS, **(bins or {})}.items()}
    nums = [_number(v) for v in values if v.strip()]
    numeric = [x for x in nums if x is not None]
    if not numeric:
        return None
    if _key(column) in wanted:
        return wanted[_key(column)]
    if len(numeric) < len(nums) or len(set(numeric)) <= max_values:
        return None
    span = max(numeric) - min(numeric)
    for exp in range(-6, 12):
        for step in (1, 2, 5):
            w = step * 10.0**exp
            if span / w < max_values:
                return w
    return None


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_label(x: float, width: float, integer: bool) -> str:
    """The bin of `x`: "40-49" (whole numbers) or "[40, 50)"."""
    lo = math.floor(x / width) * width
    hi = lo + width
    if integer:
        return f"{int(lo)}-{int(hi) - 1}" if width > 1 else f"{int(lo)}"
    return f"[{_fmt(lo)}, {_fmt(hi)})"


def subgroup_values(
    column: str,
    values: Sequence[str],
    bins: Mapping[str, float] | None = None,
    max_values: int = 12,
) -> list[str]:
    """The values of one column as subgroup names: binned when `bin_width` says so."""
    width = bin_width(column, values, bins, max_values)
    if width is None:
        return [v.strip() for v in values]
    nums = [_number(v) for v in values]
    integer = float(width).is_integer() and all(x.is_integer() for x in nums if x is not None)
    return [
        bin_label(x, width, integer) if x is not None else v.strip()
        for v, x in zip(values, nums, strict=True)
    ]


def is_binned(
    column: str,
    values: Sequence[str],
    bins: Mapping[str, float] | None = None,
    max_values: int = 12,
) -> bool:
    """True when `column` would be binned (a numeric column, or one named in `bins`)."""
    return bin_width(column, values, bins, max_values) is not None
