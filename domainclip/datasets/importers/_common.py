"""Pieces every importer shares: the result type, relative paths, and the final write step."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from domainclip.datasets.manifest import ManifestRow, write_manifest
from domainclip.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom"}
)


@dataclass
class ImportResult:
    """What an import produced.

    Attributes:
        manifest_path: the manifest written (``OUT/manifest.csv``).
        n_rows: rows in it.
        skipped: reason -> number of source items left out (each also logged).
        notes: human-readable remarks about the data (caveats, what was inferred).
        warnings: reason -> number of rows kept despite a problem (each also logged).
        splits: split name -> number of rows.
        clipped: boxes that reached past their image and were clipped to it (box importers;
            each also logged with its file).
    """

    manifest_path: Path
    n_rows: int
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    clipped: int = 0

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [f"wrote {self.n_rows} rows to {self.manifest_path}"]
        if self.splits:
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        lines.append(f"skipped {self.n_skipped}" + (f" ({skipped})" if skipped else ""))
        if self.warnings:
            lines.append(
                "warnings: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.warnings.items()))
            )
        if self.clipped:
            lines.append(
                f"clipped {self.clipped} box(es) reaching past their image to its edges "
                "(logged per file; --outside refuse stops on them instead)"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class Tally:
    """Counts of skips and warnings while importing; every entry is logged when it happens."""

    skipped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    clipped: int = 0

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        logger.warning("skipped (%s): %s", reason, message)

    def warn(self, reason: str, message: str, *, quiet: bool = False) -> None:
        """Count a kept-but-notable row; `quiet` logs at debug level (facts, not problems)."""
        self.warnings[reason] += 1
        logger.log(logging.DEBUG if quiet else logging.WARNING, "%s: %s", reason, message)

    def clip(self, message: str) -> None:
        """Count a box clipped to its image (the row is kept with the clipped box)."""
        self.clipped += 1
        logger.warning("box clipped: %s", message)


def relative_path(path: Path, out: Path) -> str:
    """`path` relative to the folder `out` (POSIX separators), so the manifest can point into a
    read-only data store without copying it. Falls back to the absolute path when no relative
    path exists (different drives on Windows)."""
    try:
        return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def require_dir(path: Path | None, kind: str, what: str) -> Path:
    """Check that the source folder exists; `what` says what the importer expects in it."""
    if path is None:
        raise DataError(f"{kind}: a source folder is required ({what})")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{kind}: source folder not found: {p} (expected {what})")
    return p


def finish_import(
    rows: Sequence[ManifestRow],
    out: Path,
    *,
    kind: str,
    src: Path | None,
    seed: int,
    val_frac: float,
    test_frac: float,
    tally: Tally,
    calib_frac: float = 0.0,
    notes: Sequence[str] = (),
) -> ImportResult:
    """Assign group-aware stratified splits, check for leakage, write ``OUT/manifest.csv``."""
    from domainclip.datasets.splits import assert_no_leakage, assign_splits

    if not rows:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(tally.skipped.items())) or "none"
        raise DataError(
            f"{kind}: no usable rows found in {src} (skipped: {reasons}); "
            "check the folder layout described in `domainclip data import --help`"
        )
    rows = assign_splits(list(rows), val_frac=val_frac, test_frac=test_frac, seed=seed, calib_frac=calib_frac)
    assert_no_leakage(rows)
    path = write_manifest(rows, Path(out) / MANIFEST_NAME)
    splits = Counter(r.split for r in rows)
    result = ImportResult(
        manifest_path=path,
        n_rows=len(rows),
        skipped=dict(sorted(tally.skipped.items())),
        notes=list(notes),
        warnings=dict(sorted(tally.warnings.items())),
        splits={s: splits[s] for s in ("train", "val", "test") if splits[s]},
        clipped=tally.clipped,
    )
    logger.info("%s import: %s", kind, result.summary().replace("\n", "; "))
    return result
