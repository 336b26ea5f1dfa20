"""What a fit policy does to the annotated findings of a manifest, before any model runs.

`geometry_report(manifest, size, policy)` reads every image's size from its header (never the
pixels), plans the image's `Fit` (`domainclip.datasets.geometry.plan_fit`, the one home of the
geometry) and sorts each annotated finding into one outcome, in this order:

    cut         no part of it is inside the model's input (visible fraction 0)
    mostly_cut  less than `cut_fraction` of it is inside
    small       enough is inside, but the visible part's shorter side is below `min_pixels`
                input pixels: too small to see at this resolution
    ok          the rest

Findings come from a row's `boxes` meta column (JSON `[[xmin, ymin, xmax, ymax, class], ...]` in
original pixels; each box is one finding of its own class). A row without boxes but with a `mask`
(PNG, non-zero = finding) contributes one finding per connected component of the mask (8-connected,
`scipy.ndimage.label`), of the row's first label. A row with both is counted once, from its boxes
(they carry the classes; the mask is the same findings drawn exactly). For a mask component the
visible fraction counts its pixels: a pixel is visible when the input window maps back onto it
(`Fit.to_original`, the map-back of saliency maps), so a thin diagonal crack is judged by its
pixels, not by its bounding box. The shorter side is that of the visible part of the component's
bounding box at the input (`Fit.box_visibility`), for boxes and components alike.

Per class the report counts images (a multi-label row counts under each of its labels), non-square
images, findings and each outcome; totals; the worst examples (row, file, box); and the rows that
could not be measured (unreadable image or mask, malformed boxes), by name, never a traceback.
`geometry_reports` measures several policies in one pass over the files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainclip.datasets.geometry import FIT_POLICIES, Fit, plan_fit
from domainclip.datasets.imageio import ImageReadError, load_mask, read_image_size
from domainclip.datasets.manifest import (
    SPLITS,
    UNASSIGNED,
    Manifest,
    ManifestRow,
    normalize_split,
    read_manifest,
)
from domainclip.errors import ConfigError
from domainclip.resultfile import Fields

NO_LABEL = "(no label)"
OUTCOMES = ("cut", "mostly_cut", "small")
MAX_EXAMPLES = 10
MAX_PROBLEMS = 20
_COMMAND = "domainclip data validate MANIFEST --image-size N --fit POLICY"


@dataclass
class GeometryCounts:
    """Counts for one class (or all): images, non-square images, findings and their outcomes.

    n_cut: findings entirely outside the input; n_mostly_cut: partly inside, less than the
    report's `cut_fraction`; n_small: inside, but shorter than `min_pixels` at the input.
    The three are disjoint (a finding has one outcome).
    """

    n_images: int = 0
    n_non_square: int = 0
    n_findings: int = 0
    n_cut: int = 0
    n_mostly_cut: int = 0
    n_small: int = 0

    @property
    def n_affected(self) -> int:
        """Findings the model cannot see properly (cut, mostly cut or too small)."""
        return self.n_cut + self.n_mostly_cut + self.n_small


@dataclass(frozen=True)
class GeometryExample:
    """One finding the policy cuts or shrinks.

    box: [xmin, ymin, xmax, ymax] in original pixels (of the mask for mask components);
    visible: fraction inside the input; side: shorter side of the visible part, input pixels.
    """

    row: int
    image: str
    label: str
    box: list[float]
    source: str  # "box" | "mask"
    visible: float
    side: float
    outcome: str


@dataclass(frozen=True)
class GeometryProblem:
    """A row that could not be (fully) measured. kind: image_<reason>, mask_<reason>,
    mask_size, bad_boxes, box_outside_image."""

    row: int
    file: str
    kind: str
    message: str


@dataclass
class GeometryReport:
    """What `policy` at `size` x `size` input pixels does to a manifest's annotated findings.

    classes: class -> counts (rows' labels for images, box classes / the row's first label for
    findings); total: all images and findings (an image once, whatever its labels); examples:
    the worst affected findings (least visible first, then smallest); problems: the first
    MAX_PROBLEMS rows that could not be measured, n_problems: their count per kind.
    """

    policy: str
    size: int
    min_pixels: float
    cut_fraction: float
    manifest: str
    split: str | None
    n_rows: int
    classes: dict[str, GeometryCounts] = field(default_factory=dict)
    total: GeometryCounts = field(default_factory=GeometryCounts)
    examples: list[GeometryExample] = field(default_factory=list)
    problems: list[GeometryProblem] = field(default_factory=list)
    n_problems: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<memory>", command: str = _COMMAND
    ) -> GeometryReport:
        """Inverse of `to_dict`; a missing or mistyped key raises `ResultFileError` naming
        `source`, the key and `command` (the command that writes it again)."""
        return cls.from_fields(Fields(data, source, command))

    @classmethod
    def from_fields(cls, f: Fields) -> GeometryReport:
        """The report from checked JSON fields (e.g. the `geometry` object of metrics.json)."""
        if f.get("policy", str) not in FIT_POLICIES:
            raise f.error(f"'{f.path('policy')}' is not one of {', '.join(FIT_POLICIES)}")
        return f.build(
            cls,
            classes={
                k: v.build(GeometryCounts, require_all=True)
                for k, v in f.mapping("classes").items()
            },
            total=f.obj("total").build(GeometryCounts, require_all=True),
            examples=[e.build(GeometryExample) for e in f.objects("examples")],
            problems=[p.build(GeometryProblem) for p in f.objects("problems")],
            n_problems={str(k): int(v) for k, v in f.get("n_problems", dict).items()},
        )

    @property
    def n_unmeasured(self) -> int:
        return sum(self.n_problems.values())

    def advice(self) -> str | None:
        """One plain sentence when the policy loses findings (None when it loses none)."""
        t, parts = self.total, []
        if t.n_cut or t.n_mostly_cut:
            text = f"{t.n_cut} of {t.n_findings} annotated findings are outside the model's input"
            if t.n_mostly_cut:
                verb = "is" if t.n_mostly_cut == 1 else "are"
                text += f" and {t.n_mostly_cut} more {verb} mostly cut off"
            text += f" under {self.policy}"
            parts.append(text + (": use --fit letterbox" if self.policy == "crop" else ""))
        if t.n_small:
            parts.append(
                f"{t.n_small} of {t.n_findings} annotated findings are smaller than "
                f"{self.min_pixels:g} px in the {self.size} px input under {self.policy}: a higher "
                "input resolution (or tiling) would keep them visible"
            )
        return ". ".join(parts) + "." if parts else None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of the per-class table, the total last."""
        header = [
            "class",
            "images",
            "non-square",
            "findings",
            "cut off",
            f"<{self.cut_fraction:.0%} visible",
            f"<{self.min_pixels:g} px",
        ]

        def cells(name: str, c: GeometryCounts) -> list[str]:
            nums = (c.n_images, c.n_non_square, c.n_findings, c.n_cut, c.n_mostly_cut, c.n_small)
            return [name, *map(str, nums)]

        rows = [cells(k, v) for k, v in sorted(self.classes.items())]
        return header, [*rows, cells("total", self.total)]

    def format(self, examples: int = 5) -> str:
        """The report as text: a heading, the per-class table, examples, problems, advice."""
        where = f"split {self.split}" if self.split else "all splits"
        lines = [
            f"geometry: fit {self.policy} at {self.size} px, {where}: rows {self.n_rows}, "
            f"images {self.total.n_images} ({self.total.n_non_square} non-square), "
            f"annotated findings {self.total.n_findings}"
        ]
        header, rows = self.table()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            lines.append(
                "  "
                + "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        for e in self.examples[:examples]:
            box = ", ".join(f"{v:g}" for v in e.box)
            lines.append(
                f"  {e.outcome}: row {e.row} {e.image} {e.label} [{box}] ({e.source}): "
                f"{e.visible:.0%} visible, {e.side:.1f} px"
            )
        if self.n_unmeasured:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.n_problems.items()))
            lines.append(f"  not measured: {self.n_unmeasured} ({kinds})")
            lines += [f"    row {p.row} {p.file}: {p.message}" for p in self.problems[:examples]]
        advice = self.advice()
        lines.append(
            f"  {advice}" if advice else "  every annotated finding is visible at this size"
        )
        return "\n".join(lines)


def format_comparison(reports: Sequence[GeometryReport]) -> str:
    """One line per policy: how many findings each would cut or shrink (several `--fit`)."""
    lines = ["fit policies compared (annotated findings):"]
    for r in reports:
        t = r.total
        lines.append(
            f"  {r.policy:<9} {t.n_cut} cut off, {t.n_mostly_cut} mostly cut, {t.n_small} below "
            f"{r.min_pixels:g} px, {t.n_findings - t.n_affected} of {t.n_findings} fine"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ measuring


class _Builder:
    """Accumulates one policy's report."""

    def __init__(self, report: GeometryReport) -> None:
        self.report = report
        self.flagged: list[GeometryExample] = []

    def image(self, labels: list[str], non_square: bool) -> None:
        for c in [self.report.total, *(self._cls(label) for label in labels)]:
            c.n_images += 1
            c.n_non_square += int(non_square)

    def finding(
        self,
        row: ManifestRow,
        label: str,
        box: Sequence[float],
        source: str,
        visible: float,
        side: float,
    ) -> None:
        r = self.report
        outcome = _outcome(visible, side, r.cut_fraction, r.min_pixels)
        for c in (r.total, self._cls(label)):
            c.n_findings += 1
            if outcome != "ok":
                setattr(c, f"n_{outcome}", getattr(c, f"n_{outcome}") + 1)
        if outcome != "ok":
            self.flagged.append(
                GeometryExample(
                    row.row,
                    row.image,
                    label,
                    [float(v) for v in box],
                    source,
                    round(float(visible), 4),
                    round(float(side), 2),
                    outcome,
                )
            )

    def _cls(self, label: str) -> GeometryCounts:
        return self.report.classes.setdefault(label, GeometryCounts())

    def finish(self, problems: list[GeometryProblem], max_examples: int) -> GeometryReport:
        r = self.report
        r.examples = sorted(self.flagged, key=lambda e: (e.visible, e.side, e.row))[:max_examples]
        r.problems = problems[:MAX_PROBLEMS]
        r.n_problems = dict(Counter(p.kind for p in problems))
        return r


def _outcome(visible: float, side: float, cut_fraction: float, min_pixels: float) -> str:
    if visible <= 1e-9:
        return "cut"
    if visible < cut_fraction:
        return "mostly_cut"
    return "small" if side < min_pixels else "ok"


def geometry_report(
    manifest: Manifest | str | Path,
    size: int,
    policy: str,
    split: str | None = None,
    min_pixels: float = 4,
    cut_fraction: float = 0.5,
    max_examples: int = MAX_EXAMPLES,
) -> GeometryReport:
    """What fitting each image into `size` x `size` under `policy` does to its findings.

    Args:
        manifest: a `Manifest` or its file.
        split: only rows of this split (aliases accepted); None: every row.
        min_pixels: a visible finding with a shorter side below this (input pixels) is "small".
        cut_fraction: a finding with less than this fraction inside the input is "mostly cut".

    Raises:
        ConfigError: unknown policy or split, size < 1, fractions out of range.
    """
    return geometry_reports(
        manifest, size, [policy], split, min_pixels, cut_fraction, max_examples
    )[0]


def geometry_reports(
    manifest: Manifest | str | Path,
    size: int,
    policies: Sequence[str],
    split: str | None = None,
    min_pixels: float = 4,
    cut_fraction: float = 0.5,
    max_examples: int = MAX_EXAMPLES,
) -> list[GeometryReport]:
    """`geometry_report` for several policies, reading each image header and mask once."""
    _check_args(size, policies, min_pixels, cut_fraction)
    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    split = _check_split(split)
    rows = [r for r in man.rows if split is None or r.split == split]
    builders = [
        _Builder(
            GeometryReport(
                p,
                int(size),
                float(min_pixels),
                float(cut_fraction),
                str(man.path or man.root),
                split,
                len(rows),
            )
        )
        for p in dict.fromkeys(policies)
    ]
    problems: list[GeometryProblem] = []
    for row in rows:
        problems += _measure_row(man, row, int(size), builders)
    return [b.finish(problems, max_examples) for b in builders]


def _check_args(size: int, policies: Sequence[str], min_pixels: float, cut_fraction: float) -> None:
    if not policies:
        raise ConfigError("no fit policy to report on; choose from " + ", ".join(FIT_POLICIES))
    for p in policies:
        if p not in FIT_POLICIES:
            raise ConfigError(f"unknown fit policy {p!r}; choose one of {', '.join(FIT_POLICIES)}")
    if int(size) < 1:
        raise ConfigError(f"input size must be >= 1 pixel, got {size}")
    if not 0 < cut_fraction <= 1:
        raise ConfigError(f"cut_fraction must be in (0, 1], got {cut_fraction}")
    if min_pixels < 0:
        raise ConfigError(f"min_pixels must be >= 0, got {min_pixels}")


def _check_split(split: str | None) -> str | None:
    if split is None:
        return None
    canonical = normalize_split(split)
    if canonical is None:
        raise ConfigError(
            f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or {UNASSIGNED!r}"
        )
    return canonical


def _measure_row(
    man: Manifest, row: ManifestRow, size: int, builders: list[_Builder]
) -> list[GeometryProblem]:
    """Count one row in every builder; returns what could not be measured."""
    try:
        w, h = read_image_size(man.image_path(row))
    except ImageReadError as exc:
        return [GeometryProblem(row.row, row.image, f"image_{exc.reason}", str(exc))]
    for b in builders:
        b.image(row.label or [NO_LABEL], w != h)
    boxes, problems = _row_boxes(row, w, h)
    if boxes:
        for b in builders:
            fit = plan_fit(w, h, size, b.report.policy)
            for label, box in boxes:
                b.finding(row, label, box, "box", *fit.box_visibility(box))
        return problems
    mask_file = row.meta.get("mask", "").strip()
    if mask_file:
        problems += _measure_mask(man, row, mask_file, (w, h), size, builders)
    return problems


def _row_boxes(
    row: ManifestRow, w: int, h: int
) -> tuple[list[tuple[str, tuple[float, float, float, float]]], list[GeometryProblem]]:
    """(class, box clipped to the image) of each usable box of the row, and what is wrong."""
    text = row.meta.get("boxes", "").strip()
    if not text:
        return [], []
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("not a list")
        parsed = [(str(b[4]), tuple(float(v) for v in b[:4])) for b in items]
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        return [], [
            GeometryProblem(
                row.row,
                row.image,
                "bad_boxes",
                f"boxes are not [[xmin, ymin, xmax, ymax, class], ...] ({exc})",
            )
        ]
    out, problems = [], []
    for label, (x0, y0, x1, y1) in parsed:
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
        if box[0] >= box[2] or box[1] >= box[3]:
            problems.append(
                GeometryProblem(
                    row.row,
                    row.image,
                    "box_outside_image",
                    f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] ({label}) has no area inside the {w}x{h} image",
                )
            )
            continue
        out.append((label, box))
    return out, problems


def _measure_mask(
    man: Manifest,
    row: ManifestRow,
    mask_file: str,
    image_size: tuple[int, int],
    size: int,
    builders: list[_Builder],
) -> list[GeometryProblem]:
    """One finding per 8-connected component of the row's mask, in every builder."""
    from scipy import ndimage

    path = Path(mask_file).expanduser()
    path = path if path.is_absolute() else man.root / path
    try:
        mask = load_mask(path)
    except ImageReadError as exc:
        return [GeometryProblem(row.row, mask_file, f"mask_{exc.reason}", f"mask {exc}")]
    (w, h), (mh, mw) = image_size, mask.shape
    if abs(mw / mh - w / h) > 0.01 * (w / h):
        return [
            GeometryProblem(
                row.row,
                mask_file,
                "mask_size",
                f"mask {path} is {mw}x{mh} but its image is {w}x{h}",
            )
        ]
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = [
        (float(sx.start), float(sy.start), float(sx.stop), float(sy.stop))
        for sy, sx in ndimage.find_objects(labels)
    ]
    label = row.label[0] if row.label else NO_LABEL
    for b in builders:
        fit = plan_fit(mw, mh, size, b.report.policy)
        inside = np.bincount(labels[_visible(fit)], minlength=n + 1)[1:]
        for k in range(n):
            b.finding(
                row, label, boxes[k], "mask", inside[k] / areas[k], fit.box_visibility(boxes[k])[1]
            )
    return []


def _visible(fit: Fit) -> np.ndarray:
    """bool [height, width]: the original pixels the input window maps back onto."""
    return np.isfinite(fit.to_original(np.zeros((fit.size, fit.size), dtype=np.float32)))


# ------------------------------------------------------------------------------ choosing a policy

# `data.fit: auto` (the default recipe): tiles when the images are at least twice the input and
# at least a quarter of the training split's annotated findings would be shorter than 8 px at a
# letterboxed input, else letterbox. Chosen
# from benchmarks/geometry.py (README "Choosing a fit policy"): on large images with small
# findings tiling was the best policy; where findings stay visible letterbox is as good and 3-4x
# cheaper, and without annotations nothing says findings are small (chest X-rays: global findings).
AUTO_MIN_PIXELS = 8.0
AUTO_SMALL_FRACTION = 0.25
AUTO_MIN_FINDINGS = 10
AUTO_MIN_RATIO = 2.0


def choose_fit(manifest: Manifest | str | Path, size: int, split: str = "train") -> tuple[str, str]:
    """The fit policy `auto` stands for on this data at a `size` px input, and one sentence why:
    tile when the images are at least twice the input (median longer side) and at least a quarter
    of the split's annotated findings would be under 8 px letterboxed; else letterbox.

    Returns:
        ("tile" | "letterbox", reason). Only image headers and masks are read.
    """
    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    longer = _median_longer_side(man, _check_split(split))
    if longer is None or longer < AUTO_MIN_RATIO * size:
        return "letterbox", (
            f"the {split} images' median longer side ({longer or 0:.0f} px) is under "
            f"{AUTO_MIN_RATIO:g}x the {size} px input, so tiles would see no more detail: letterbox"
        )
    t = geometry_report(man, size, "letterbox", split=split, min_pixels=AUTO_MIN_PIXELS).total
    if t.n_findings < AUTO_MIN_FINDINGS:
        return "letterbox", (
            f"{t.n_findings} annotated findings (boxes/masks) in the {split} split, too few to "
            "judge their size: letterbox, which never discards pixels"
        )
    share = t.n_small / t.n_findings
    where = (
        f"{t.n_small} of {t.n_findings} annotated findings ({share:.0%}) of the {split} split "
        f"would be under {AUTO_MIN_PIXELS:g} px at a {size} px letterboxed input (images "
        f"{longer:.0f} px)"
    )
    if share >= AUTO_SMALL_FRACTION:
        return "tile", f"{where}: tiles at native resolution"
    return "letterbox", f"{where}: letterbox"


def _median_longer_side(man: Manifest, split: str | None, n: int = 200) -> float | None:
    """Median longer side (px) of up to `n` readable images of the split (headers only)."""
    rows = [r for r in man.rows if split is None or r.split == split]
    sides = []
    for row in rows[:: max(1, len(rows) // n)]:
        try:
            sides.append(max(read_image_size(man.image_path(row))))
        except ImageReadError:
            continue  # unreadable images are counted where they are read for training
    return float(np.median(sides)) if sides else None
