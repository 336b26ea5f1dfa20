"""Group-aware, leakage-safe train/val/test splits and the leakage check.

A *group* is the unit that must never be divided between splits: a patient or study in medical
imaging, a production lot or part in industry. Rows of one group always land in one split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainclip.datasets.manifest import SPLITS, UNASSIGNED, ManifestRow
from domainclip.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


@dataclass
class LeakageProblem:
    """A group (or an image file) whose rows are in more than one split.

    Attributes:
        kind: "group" or "image".
        key: the group id or the image path.
        rows_by_split: split name -> manifest row numbers (1-based) in that split.
    """

    kind: str
    key: str
    rows_by_split: dict[str, list[int]] = field(default_factory=dict)

    def message(self) -> str:
        parts = [
            f"{split} (row{'s' if len(r) > 1 else ''} {', '.join(map(str, r[:5]))}"
            f"{', ...' if len(r) > 5 else ''})"
            for split, r in sorted(self.rows_by_split.items())
        ]
        return f"{self.kind} {self.key!r} is in " + " and ".join(parts)


def _group_of(row: ManifestRow) -> str:
    return row.group or row.image


def check_leakage(rows: Iterable[ManifestRow]) -> list[LeakageProblem]:
    """Find groups and image files that appear in more than one split.

    Rows with split "unassigned" are ignored (they are in no split yet).

    Returns:
        One `LeakageProblem` per leaking group / image, sorted by kind then key.
    """
    by_group: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    by_image: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.split == UNASSIGNED:
            continue
        by_group[_group_of(r)][r.split].append(r.row)
        by_image[os.path.normpath(r.image)][r.split].append(r.row)
    problems = [
        LeakageProblem(kind, key, {s: list(v) for s, v in splits.items()})
        for kind, table in (("group", by_group), ("image", by_image))
        for key, splits in sorted(table.items())
        if len(splits) > 1
    ]
    # An image leaking with a group of its own name (no group column) is one problem, not two.
    group_keys = {p.key for p in problems if p.kind == "group"}
    return [p for p in problems if p.kind == "group" or p.key not in group_keys]


def format_leakage(problems: Sequence[LeakageProblem]) -> str:
    """One-paragraph description: the first few problems plus the total count."""
    shown = "; ".join(p.message() for p in problems[:_MAX_LISTED])
    more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return (
        f"{len(problems)} group(s)/image(s) span more than one split: {shown}{more}. "
        "Every patient/study/lot must be in exactly one split: fix the split column, or clear it "
        "and let assign_splits (domainclip data import --val-frac/--test-frac) assign groups."
    )


def assert_no_leakage(rows: Iterable[ManifestRow]) -> None:
    """Raise `DataError` listing the leaking groups (first few + count) if any group spans splits."""
    problems = check_leakage(rows)
    if problems:
        raise DataError(format_leakage(problems))


# ----------------------------------------------------------------------------------------------
# Assignment


def _check_fractions(val_frac: float, test_frac: float, calib_frac: float = 0.0) -> None:
    for name, v in (("val_frac", val_frac), ("test_frac", test_frac), ("calib_frac", calib_frac)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {v}")
    if val_frac + test_frac + calib_frac >= 1.0:
        raise ConfigError(
            f"val_frac + test_frac + calib_frac must be below 1 (got {val_frac} + {test_frac} + "
            f"{calib_frac}); nothing would be left for training"
        )


def _n_take(frac: float, n_groups: int) -> int:
    # At least one group when a fraction was asked for, but never all of them.
    if frac <= 0 or n_groups < 2:
        return 0
    return min(n_groups - 1, max(1, round(frac * n_groups)))


_RARE = "(rare labels)"


def _strata(labels: list[str], max_strata: int) -> list[str]:
    """Stratum per group: its label, with labels too rare to stratify pooled together.

    StratifiedShuffleSplit needs at least two members per stratum and at most as many strata as
    either side has groups. The most frequent labels keep their own stratum; the rest are pooled
    (and the pool joins the largest stratum when it has a single member).
    """
    counts = Counter(labels)
    ranked = [lab for lab, n in counts.most_common() if n >= 2]
    keep = set(ranked[: max(1, max_strata - 1)] if len(ranked) >= max_strata else ranked)
    pooled = [lab if lab in keep else _RARE for lab in labels]
    if 0 < pooled.count(_RARE) < 2 and ranked:
        pooled = [ranked[0] if lab == _RARE else lab for lab in pooled]
    return pooled


def _pick(
    group_ids: list[str],
    group_labels: list[str],
    n_take: int,
    seed: int,
    stratify: bool,
    what: str,
) -> tuple[set[str], str]:
    """Choose `n_take` groups. Returns (chosen ids, how they were chosen)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    if n_take == 0:
        return set(), "none requested"
    idx = np.arange(len(group_ids))
    strata = _strata(group_labels, min(n_take, len(group_ids) - n_take))
    n_strata = len(set(strata))
    # StratifiedShuffleSplit needs at least one group per stratum on both sides of the cut.
    room = min(n_take, len(group_ids) - n_take) >= n_strata
    if stratify and n_strata >= 2 and room:
        n_pooled = len(set(group_labels)) - n_strata + (1 if _RARE in strata else 0)
        how = "stratified by first label" + (
            f" ({n_pooled} rare labels pooled)" if n_pooled else ""
        )
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_take, random_state=seed)
        _, chosen = next(splitter.split(idx, strata))
    else:
        how = "not stratified: " + (
            "stratify=False"
            if not stratify
            else f"{n_take} {what} groups cannot hold one of each of {n_strata} label strata"
            if n_strata >= 2
            else "fewer than two labels have two or more groups"
        )
        logger.info("%s split %s", what, how)
        # Each element is one group already, so this is a seeded group-level shuffle split.
        splitter = GroupShuffleSplit(n_splits=1, test_size=n_take, random_state=seed)
        _, chosen = next(splitter.split(idx, groups=idx))
    return {group_ids[i] for i in chosen}, how


def _assign_groups(
    ids: list[str], labels: list[str], fracs: tuple[float, float, float], seed: int, stratify: bool
) -> tuple[dict[str, str], str, str]:
    """Split of every group in `ids` for fractions (val, test, calib): test first, then calib, then
    val from the rest. Returns (group -> split, how test was chosen, how val was chosen)."""
    val_frac, test_frac, calib_frac = fracs
    test, how_test = _pick(ids, labels, _n_take(test_frac, len(ids)), seed, stratify, "test")
    rest = [i for i, g in enumerate(ids) if g not in test]
    calib, _ = _pick([ids[i] for i in rest], [labels[i] for i in rest],
                     _n_take(calib_frac / (1.0 - test_frac), len(rest)), seed + 2, stratify, "calib")
    rest = [i for i in rest if ids[i] not in calib]
    rest_ids, rest_labels = [ids[i] for i in rest], [labels[i] for i in rest]
    val_share = val_frac / (1.0 - test_frac - calib_frac) if val_frac > 0 else 0.0
    val, how_val = _pick(
        rest_ids, rest_labels, _n_take(val_share, len(rest_ids)), seed + 1, stratify, "val"
    )
    assignment = {
        g: "test" if g in test else "calib" if g in calib else "val" if g in val else "train" for g in ids
    }
    return assignment, how_test, how_val


def assign_splits(
    rows: Iterable[ManifestRow],
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
    *,
    overwrite: bool = False,
    calib_frac: float = 0.0,
) -> list[ManifestRow]:
    """Assign train/val/test (and calib) to rows group by group (no group is ever split).

    Rows that already have a split keep it unless `overwrite`. Unassigned rows of a group that
    already has rows in a split join that split. The remaining groups are divided with
    scikit-learn splitters at group level: test first, then calib (when `calib_frac` > 0: data for
    conformal thresholds only, never for training, checkpoint choice or calibrator fitting), then
    val from the rest, stratified by each
    group's most common first label when every label has at least two groups (otherwise an
    unstratified `GroupShuffleSplit`; the reason is logged). Fractions are of the groups being
    assigned, so with groups of unequal size the row fractions are approximate.

    Args:
        rows: manifest rows (not modified).
        val_frac, test_frac: fractions of the groups to put in val and test.
        calib_frac: fraction of the groups to put in calib (default none; with 0 the assignment
            is the same as without the option).
        seed: random seed; the same rows and seed always give the same assignment.
        stratify: try to keep label proportions equal across splits.
        overwrite: reassign every row, ignoring existing split values.

    Returns:
        New `ManifestRow` objects in the input order.
    """
    _check_fractions(val_frac, test_frac, calib_frac)
    rows = list(rows)
    fixed: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if not overwrite and r.split != UNASSIGNED:
            fixed[_group_of(r)][r.split] += 1
    free_rows = [r for r in rows if overwrite or r.split == UNASSIGNED]
    free_groups: dict[str, Counter[str]] = defaultdict(Counter)
    for r in free_rows:
        g = _group_of(r)
        if g not in fixed:
            free_groups[g][r.label[0] if r.label else ""] += 1

    # Sorted so the result does not depend on row order, only on the set of groups and the seed.
    ids = sorted(free_groups)
    labels = [free_groups[g].most_common(1)[0][0] for g in ids]
    assignment, how_test, how_val = _assign_groups(ids, labels, (val_frac, test_frac, calib_frac), seed, stratify)
    for g, splits in fixed.items():
        if len(splits) > 1:
            logger.warning(
                "group %r already spans %s; its unassigned rows go to %s (run check_leakage)",
                g,
                sorted(splits),
                splits.most_common(1)[0][0],
            )
        assignment[g] = splits.most_common(1)[0][0]

    out = [
        dataclasses.replace(r, split=assignment[_group_of(r)])
        if overwrite or r.split == UNASSIGNED
        else dataclasses.replace(r)
        for r in rows
    ]
    counts = Counter(r.split for r in out)
    logger.info(
        "assigned splits to %d rows in %d groups (seed %d; test: %s; val: %s): %s",
        len(free_rows),
        len(ids),
        seed,
        how_test,
        how_val,
        ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS),
    )
    return out


# ----------------------------------------------------------------------------------------------
# Splitting a manifest file (`domainclip data split`)


@dataclass
class SplitReport:
    """What `split_manifest` did.

    Attributes:
        path: the manifest written.
        by: the column whose values were kept together; stratify: "label" or "none"; seed.
        assigned: rows given a split now; kept: rows whose existing split was kept.
        rows, groups: split -> rows / distinct `by` values in it (all rows, after assignment).
        labels: split -> first label -> rows.
        leakage: groups (and images) in more than one split; empty when the check passed.
    """

    path: str
    by: str
    stratify: str
    seed: int
    assigned: int = 0
    kept: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    leakage: list[LeakageProblem] = field(default_factory=list)

    def format(self) -> str:
        """Per-split counts and the leakage check, for the command line."""
        how = f"by {self.by}, " + ("stratified by label" if self.stratify == "label" else "not stratified")
        lines = [
            f"split {self.path} ({how}, seed {self.seed}): assigned {self.assigned} rows, "
            f"kept {self.kept} existing assignments"
        ]
        for s in (*SPLITS, UNASSIGNED):
            if self.rows.get(s):
                labels = ", ".join(f"{k or '(none)'} {v}" for k, v in sorted(self.labels[s].items()))
                unit = "groups" if self.by == "group" else f"{self.by} values"
                lines.append(f"  {s}: {self.rows[s]} rows, {self.groups[s]} {unit} ({labels})")
        if self.leakage:
            lines.append("leakage check: FAILED: " + format_leakage(self.leakage))
        else:
            lines.append(f"leakage check: passed (no {self.by} value and no image in two splits)")
        return "\n".join(lines)


def carve_calib(rows: Sequence[ManifestRow], calib_frac: float, seed: int = 0, stratify: bool = True) -> list[ManifestRow]:
    """Move whole train groups into a `calib` split: `calib_frac` of all groups (at least one,
    never every train group), stratified by label like `assign_splits`. val and test stay as they
    are, so results measured on them stay comparable; only the training set shrinks.

    Raises:
        DataError: the manifest already has a calib split, or train has fewer than 2 groups.
    """
    _check_fractions(0.0, 0.0, calib_frac)
    if any(r.split == "calib" for r in rows):
        raise DataError("the manifest already has a calib split; pass --force to reassign every row")
    train: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if r.split == "train":
            train[_group_of(r)][r.label[0] if r.label else ""] += 1
    if len(train) < 2:
        raise DataError(f"train has {len(train)} group(s): nothing can be moved to calib")
    n_groups = len({_group_of(r) for r in rows})
    ids = sorted(train)
    labels = [train[g].most_common(1)[0][0] for g in ids]
    n_take = min(len(ids) - 1, max(1, round(calib_frac * n_groups)))
    calib, how = _pick(ids, labels, n_take, seed + 2, stratify, "calib")
    logger.info("moved %d of %d train groups to calib (%s)", len(calib), len(ids), how)
    return [dataclasses.replace(r, split="calib") if _group_of(r) in calib else dataclasses.replace(r) for r in rows]


def _check_splittable(manifest: Any, path: Path, by: str, force: bool, carve: bool = False) -> None:
    """Refuse a manifest that would lose rows when rewritten, lacks `by`, or is split already
    (unless `carve`: only a calib split is cut out of train)."""
    skips = [p for p in manifest.problems if p.severity == "skip"]
    if skips:
        shown = "; ".join(p.message for p in skips[:_MAX_LISTED])
        raise DataError(
            f"{path}: {len(skips)} row(s) cannot be read ({shown}); rewriting the manifest would "
            "drop them. Fix them first (`domainclip data validate` lists them all)."
        )
    if by != "group" and by not in manifest.columns:
        raise DataError(
            f"{path}: --by {by!r} is not a column; columns: {', '.join(manifest.columns)}"
        )
    counts = Counter(r.split for r in manifest.rows)
    if not force and not carve and manifest.rows and counts.get(UNASSIGNED, 0) == 0:
        parts = ", ".join(f"{s} {counts[s]}" for s in SPLITS if counts.get(s))
        raise DataError(
            f"{path} is already split ({parts}); refusing to reshuffle it. Pass --force to "
            "reassign every row (results of runs trained on the old split are then no longer "
            "comparable), or clear the split column of the rows to reassign."
        )


def split_manifest(
    path: str | os.PathLike[str],
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    by: str = "group",
    stratify: str = "label",
    force: bool = False,
    calib_frac: float = 0.0,
) -> SplitReport:
    """Write the split column of a manifest file in place: group-aware and stratified.

    Rows with a split keep it (and unassigned rows of their group join them) unless `force`,
    which reassigns every row; a manifest whose every row is split is refused without `force`,
    except with `calib_frac` > 0: then only a `calib` split is carved out of train
    (`carve_calib`; val and test keep their rows).
    `by` names the column whose values stay together ("group", or any metadata column; an empty
    cell makes the image its own group). The file is rewritten atomically only when the leakage
    check passes.

    Raises:
        DataError: unreadable manifest, unreadable rows (rewriting would drop them), unknown
            `by` column, already split without `force`, or leakage after assignment.
        ConfigError: bad fractions or `stratify` value.
    """
    from domainclip.datasets.manifest import read_manifest, write_manifest

    if stratify not in ("label", "none"):
        raise ConfigError(f"--stratify must be 'label' or 'none', got {stratify!r}")
    _check_fractions(val_frac, test_frac, calib_frac)
    manifest = read_manifest(path)
    p = Path(path)
    carve = calib_frac > 0 and not force and bool(manifest.rows) and all(r.split != UNASSIGNED for r in manifest.rows)
    _check_splittable(manifest, p, by, force, carve)
    keyed = [
        dataclasses.replace(r, group=r.group if by == "group" else (r.meta.get(by) or r.image))
        for r in manifest.rows
    ]
    if carve:
        done = carve_calib(keyed, calib_frac, seed, stratify == "label")
    else:
        done = assign_splits(
            keyed, val_frac, test_frac, seed, stratify == "label", overwrite=force, calib_frac=calib_frac
        )
    report = SplitReport(str(p), by, stratify, seed)
    report.kept = sum(1 for r, d in zip(manifest.rows, done, strict=True)
                      if not force and r.split != UNASSIGNED and r.split == d.split)
    report.assigned = len(done) - report.kept
    report.leakage = check_leakage(done)
    rows = [dataclasses.replace(r, split=d.split) for r, d in zip(manifest.rows, done, strict=True)]
    if by != "group":
        report.leakage += [q for q in check_leakage(rows) if q.kind == "group"]
    for s, members in _by_split(done).items():
        report.rows[s] = len(members)
        report.groups[s] = len({r.group for r in members})
        report.labels[s] = dict(Counter(r.label[0] if r.label else "" for r in members))
    if report.leakage:
        raise DataError(f"{p}: not written: " + format_leakage(report.leakage))
    # An empty group cell reads as "the image is its own group": write it back empty.
    write_manifest([dataclasses.replace(r, group="" if r.group == r.image else r.group) for r in rows], p)
    return report


def _by_split(rows: Sequence[ManifestRow]) -> dict[str, list[ManifestRow]]:
    out: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        out[r.split].append(r)
    return dict(out)
