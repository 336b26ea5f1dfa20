"""Shortcut check: does the model need the annotated finding, or does it classify from context?

For every evaluated row with a ground-truth region (meta `mask`: a PNG, non-zero = finding; or meta
`boxes`: JSON `[[xmin, ymin, xmax, ymax, class], ...]`, original pixels) three versions of the image
are built in ORIGINAL pixel space, before the model's preprocessing (`transform`), so whatever
resize, crop or padding the evaluation uses treats them exactly like the intact image:

* ``intact``: the image as read.
* ``removed``: the region, dilated by `dilation` pixels (edges, anti-aliasing, annotation slack),
  is filled from its surroundings (`fill`).
* ``only_region``: everything outside the dilated region is replaced (`outside`).

Each version is embedded once (batched) and classified through the evaluation's own zero-shot task
(`ZeroShotTask.logits`, i.e. `bb.class_logits`, heads included) and calibrator
(`Calibrator.probabilities`). Per class and overall: accuracy and the mean calibrated probability of
the true class for each version, the paired accuracy drop (intact - removed), with stratified
bootstrap CIs (`evaluation.bootstrap`, strata = class).

The rule ("uses context"), with C scored classes and chance = 1/C:

    retained = (acc_removed - chance) / (acc_intact - chance)

A cell (overall, or one class) is flagged when it has at least `min_rows` rows (`min_class_rows`
per class), its intact accuracy is at least `min_above_chance` above chance (otherwise there is
nothing to retain: undetermined), and retained >= `threshold` (default 0.8: the model keeps 80% of
its above-chance accuracy without the finding). The overall verdict is "uses_context" (flagged),
"uses_region" (retained < threshold) or "undetermined". Point estimates decide; the CIs are reported
beside them.

Fills (`fill`):
* ``blur`` (default): normalised Gaussian blur of the pixels OUTSIDE the hole, i.e.
  blur(image * keep) / blur(keep), with sigma at least the largest distance from the hole's edge
  to its inside (so every hole pixel is reached). Only surrounding pixels enter the fill: a plain
  blur of the whole image would smear the finding's own colour back into the hole, which a
  colour- or brightness-driven model would still read. Deterministic, any region size, numpy/scipy
  only (three box-filter passes, cost independent of sigma).
* ``inpaint``: OpenCV Telea inpainting (`cv2.inpaint`, radius 5; OpenCV comes with
  albumentations). It continues edges and lines into the hole, which looks more natural on
  textured surfaces, but is slower on large regions.
Both leave a smooth patch where the finding was; a model that flags smooth patches as a class
(e.g. "patch" defects) can react to the fill itself, so read "removed" accuracy with that in mind.

Outside fills (`outside`): ``grey`` (default: the backbone's normalisation mean, which is input 0
after normalisation and says nothing about the image), ``mean`` (the image's own mean colour:
keeps the finding's contrast but also the global colour/brightness, which a context model can
use), ``blur`` (a strong blur, sigma 5% of the longer side, of the outside pixels only, the
region not smeared into it: keeps the coarse layout).

Cost: 3 image embeddings (plus reading, filling and preprocessing) per row with a region.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from domainclip.errors import ConfigError, DomainClipError
from domainclip.evaluation.bootstrap import DEFAULT_N_BOOT, Estimate, bootstrap_metrics
from domainclip.resultfile import Fields

log = logging.getLogger(__name__)

FILLS = ("blur", "inpaint")
OUTSIDE_FILLS = ("grey", "mean", "blur")
VERSIONS = ("intact", "removed", "only_region")
VERDICTS = ("uses_context", "uses_region", "undetermined")
MIN_SIGMA = 4.0  # px: the smallest blur of the `blur` fill
OUTSIDE_BLUR = 0.05  # sigma of the "blur" outside fill, as a fraction of the image's longer side
INPAINT_RADIUS = 5
MAX_NOTES = 5
COMMAND = "domainclip evaluate RUN_OR_BACKBONE --shortcut-check"


@dataclass(frozen=True)
class ShortcutSettings:
    """Options of the shortcut check (see the module docstring for the rule and the fills).

    Attributes:
        fill: how the removed region is filled: "blur" | "inpaint".
        outside: what replaces everything outside the region in only_region: "grey" | "mean" | "blur".
        dilation: pixels (original image) the region is grown by before removing / keeping it.
        threshold: retained fraction of above-chance accuracy at or above which "uses context".
        min_above_chance: intact accuracy must exceed chance by this much to be judged.
        min_rows: rows with a region needed for an overall verdict (and, in evaluate, to run the
            check by default); min_class_rows: the same for one class's flag.
        max_region_fraction: rows whose dilated region covers more of the image are skipped
            (nothing would be left to be context).
        n_boot, seed: bootstrap replicates and seed; batch_size: images per forward pass.
    """

    fill: str = "blur"
    outside: str = "grey"
    dilation: int = 4
    threshold: float = 0.8
    min_above_chance: float = 0.1
    min_rows: int = 10
    min_class_rows: int = 5
    max_region_fraction: float = 0.9
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            raise ConfigError(f"shortcut fill {self.fill!r}: choose one of {', '.join(FILLS)}")
        if self.outside not in OUTSIDE_FILLS:
            raise ConfigError(
                f"shortcut outside fill {self.outside!r}: choose one of {', '.join(OUTSIDE_FILLS)}"
            )
        checks = (
            ("dilation", self.dilation >= 0, ">= 0"),
            ("threshold", 0 < self.threshold <= 1, "in (0, 1]"),
            ("min_above_chance", 0 <= self.min_above_chance < 1, "in [0, 1)"),
            ("min_rows", self.min_rows >= 1, ">= 1"),
            ("min_class_rows", self.min_class_rows >= 1, ">= 1"),
            ("max_region_fraction", 0 < self.max_region_fraction <= 1, "in (0, 1]"),
            ("n_boot", self.n_boot >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"shortcut {name} must be {allowed}, got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------ image versions


def _box_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur of x [H, W] or [H, W, K] over the two spatial axes: three box passes
    (variance 3 (w^2 - 1) / 12 = sigma^2), zero outside the image. O(pixels), any sigma."""
    from scipy.ndimage import uniform_filter

    w = max(1, int(round(np.sqrt(4.0 * sigma * sigma + 1.0))))
    size = (w, w) + (1,) * (x.ndim - 2)
    for _ in range(3):
        x = uniform_filter(x, size=size, mode="constant", cval=0.0)
    return x


def normalised_blur(image: np.ndarray, keep: np.ndarray, sigma: float) -> np.ndarray:
    """blur(image * keep) / blur(keep): a blur of image [H, W, 3] that uses only the pixels where
    `keep` (bool [H, W]); where no kept pixel is near, their mean. Returns float32 [H, W, 3]."""
    img = image.astype(np.float32)
    k = keep.astype(np.float32)
    num = _box_blur(img * k[..., None], sigma)
    den = _box_blur(k, sigma)[..., None]
    fallback = img[keep].mean(axis=0)
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), fallback).astype(np.float32)


def blur_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """image float [H, W, 3] with the pixels of `hole` (bool [H, W]) replaced by the normalised
    blur of the pixels outside it (see the module docstring). Returns float32 [H, W, 3]."""
    from scipy.ndimage import distance_transform_edt

    img = image.astype(np.float32)
    if not hole.any():
        return img
    if hole.all():
        raise ValueError("the region covers the whole image: nothing to fill it from")
    sigma = max(MIN_SIGMA, float(distance_transform_edt(hole).max()))
    out = img.copy()
    out[hole] = normalised_blur(img, ~hole, sigma)[hole]
    return out


def inpaint_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """OpenCV Telea inpainting of `hole` (bool [H, W]) in image [H, W, 3]. Returns float32."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - OpenCV comes with albumentations
        raise ConfigError(
            "the shortcut check's 'inpaint' fill needs OpenCV (pip install opencv-python-headless); "
            "or use --shortcut-fill blur"
        ) from exc
    img = np.clip(image, 0, 255).astype(np.uint8)
    out = cv2.inpaint(img, hole.astype(np.uint8) * 255, INPAINT_RADIUS, cv2.INPAINT_TELEA)
    return out.astype(np.float32)


def make_versions(
    image: np.ndarray,
    region: np.ndarray,
    settings: ShortcutSettings,
    grey: Sequence[float] = (127.5, 127.5, 127.5),
) -> dict[str, np.ndarray]:
    """The three versions of one image, uint8 [H, W, 3] each, keyed by `VERSIONS`.

    Args:
        image: uint8 [H, W, 3] original pixels; region: bool [H, W] (already dilated).
        grey: the colour (0-255) of the "grey" outside fill.
    """
    img = image.astype(np.float32)
    fill = blur_fill if settings.fill == "blur" else inpaint_fill
    removed = fill(img, region)
    if settings.outside == "grey":
        background = np.broadcast_to(np.asarray(grey, np.float32), img.shape)
    elif settings.outside == "mean":
        background = np.broadcast_to(img.reshape(-1, 3).mean(axis=0), img.shape)
    else:
        sigma = max(MIN_SIGMA, OUTSIDE_BLUR * max(img.shape[:2]))
        background = normalised_blur(img, ~region, sigma)  # the region is not smeared outside
    only = np.where(region[..., None], img, background)
    return {
        "intact": image,
        "removed": np.clip(np.rint(removed), 0, 255).astype(np.uint8),
        "only_region": np.clip(np.rint(only), 0, 255).astype(np.uint8),
    }


# ------------------------------------------------------------------------------ reading the rows


def has_region(meta: dict[str, str]) -> bool:
    """The row names a mask or a non-empty box list (cheap: nothing is read)."""
    boxes = (meta.get("boxes") or "").strip()
    return bool((meta.get("mask") or "").strip()) or boxes not in ("", "[]")


def count_region_rows(manifest: Any, split: str | None) -> int:
    """Rows of `split` (None: all) that name a mask or boxes."""
    return sum(1 for r in _split_rows(manifest, split) if has_region(r.meta))


def _split_rows(manifest: Any, split: str | None) -> list[Any]:
    from domainclip.datasets.manifest import normalize_split

    want = normalize_split(split) if split is not None else None
    return [r for r in manifest.rows if want is None or r.split == want]


@dataclass
class _Prepared:
    """Rows whose three versions were embedded: features [3, M, D], targets [M], notes."""

    feats: Any  # torch.Tensor [3, M, D]
    y: np.ndarray
    fractions: list[float]
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # tiles per row (`fit: tile`), same per version

    def logits(self, task: Any, bb: Any, aggregate: str) -> Any:
        """[3 * M, C] class logits of the three versions (tiled rows: per tile, aggregated)."""
        import torch

        from domainclip.scoring.tiles import TiledFeatures

        if not self.counts:
            return task.logits(bb, self.feats.reshape(-1, self.feats.shape[-1]))
        parts = [TiledFeatures(f, self.counts, aggregate).scores(lambda x: task.logits(bb, x)) for f in self.feats]
        return torch.cat(parts)


def _load(
    manifest: Any, row: Any, settings: ShortcutSettings
) -> tuple[np.ndarray, np.ndarray] | str:
    """(image uint8 [H, W, 3], dilated region bool [H, W]) of a row, or why it is skipped."""
    from domainclip.datasets.imageio import ImageReadError, load_image
    from domainclip.explain.errors import ExplainError
    from domainclip.explain.inputs import region_from_meta
    from domainclip.explain.localisation import dilate

    path = manifest.image_path(row)
    try:
        pil = load_image(path)
    except ImageReadError as exc:
        return f"image unreadable|{row.where()}: {exc}"
    try:
        found = region_from_meta(row.meta, manifest.root, pil.size)
    except (ExplainError, DomainClipError, ValueError, TypeError) as exc:
        return f"region unreadable|{row.where()} ({path.name}): {exc}"
    if found is None or not found[0].any():
        return "no region|"
    region = dilate(found[0], settings.dilation)
    if region.mean() > settings.max_region_fraction:
        return "region covers nearly the whole image|"
    return np.asarray(pil, dtype=np.uint8), region


def _prepare(
    bb: Any,
    manifest: Any,
    items: list[tuple[Any, int]],
    transform: Callable,
    settings: ShortcutSettings,
) -> _Prepared:
    """Read, fill, preprocess and embed the three versions of every (row, class index) item."""
    import torch
    from PIL import Image

    grey = tuple(255.0 * m for m in bb.mean)
    out = _Prepared(None, np.zeros(0, np.int64), [])
    pending: list[list[Any]] = [[], [], []]
    feats: list[list[Any]] = [[], [], []]
    ys: list[int] = []

    def flush() -> None:
        if pending[0]:
            for v in range(3):
                stack = torch.cat if pending[v][0].dim() == 4 else torch.stack  # tiles: [T, 3, S, S]
                feats[v].append(bb.encode_images(stack(pending[v]), settings.batch_size))
                pending[v].clear()

    for row, y in items:
        loaded = _load(manifest, row, settings)
        if isinstance(loaded, str):
            reason, _, note = loaded.partition("|")
            out.skipped[reason] += 1
            if note and len(out.notes) < MAX_NOTES:
                out.notes.append(note)
            continue
        image, region = loaded
        versions = make_versions(image, region, settings, grey)
        for v, name in enumerate(VERSIONS):
            pending[v].append(transform(Image.fromarray(versions[name])))
        if pending[0][-1].dim() == 4:
            out.counts.append(int(pending[0][-1].shape[0]))
        ys.append(y)
        out.fractions.append(float(region.mean()))
        if len(pending[0]) >= settings.batch_size:
            flush()
    flush()
    if ys:
        # [3, M, D] or, tiled, [3, sum T, D] (every version has the same tiles)
        out.feats = torch.stack([torch.cat(f) for f in feats])
    out.y = np.asarray(ys, dtype=np.int64)
    return out


# ------------------------------------------------------------------------------ statistics and rule


def retained_fraction(acc_intact: float, acc_removed: float, chance: float) -> float | None:
    """(acc_removed - chance) / (acc_intact - chance); None when intact is not above chance."""
    above = acc_intact - chance
    return None if above <= 0 else (acc_removed - chance) / above


def judge(
    acc_intact: float | None,
    acc_removed: float | None,
    chance: float,
    n: int,
    min_n: int,
    settings: ShortcutSettings,
) -> tuple[bool | None, float | None, str]:
    """(uses context?, retained fraction, why) for one cell; None = undetermined (the rule is in
    the module docstring)."""
    if acc_intact is None or acc_removed is None or n < min_n:
        return None, None, f"{n} rows with a region, fewer than the {min_n} needed to judge"
    retained = retained_fraction(acc_intact, acc_removed, chance)
    if acc_intact - chance < settings.min_above_chance:
        return (
            None,
            retained,
            (
                f"intact accuracy {acc_intact:.3f} is less than {settings.min_above_chance:g} above "
                f"chance ({chance:.3f}): there is no above-chance accuracy to retain"
            ),
        )
    assert retained is not None
    flagged = retained >= settings.threshold
    return (
        flagged,
        retained,
        (
            f"with the region removed accuracy is {acc_removed:.3f} vs {acc_intact:.3f} intact "
            f"(chance {chance:.3f}): it keeps {100 * retained:.0f}% of its above-chance accuracy, "
            + ("at or above" if flagged else "below")
            + f" the {100 * settings.threshold:.0f}% threshold"
        ),
    )


def _stat(correct: np.ndarray, conf: np.ndarray, y: np.ndarray, classes: Sequence[str]):
    """The bootstrap statistic: idx [M] -> {"<cell>/<version>/accuracy": ..., ...}.

    correct, conf: [3, M] (VERSIONS order); cells are "all" and "class=<c>" (classes present)."""
    present = [(c, k) for k, c in enumerate(classes) if (y == k).any()]

    def cell(prefix: str, idx: np.ndarray, out: dict[str, float | None]) -> None:
        if len(idx) == 0:
            return
        for v, name in enumerate(VERSIONS):
            out[f"{prefix}/{name}/accuracy"] = float(correct[v, idx].mean())
            out[f"{prefix}/{name}/confidence"] = float(conf[v, idx].mean())
        out[f"{prefix}/accuracy_drop"] = float((correct[0, idx] * 1.0 - correct[1, idx]).mean())
        out[f"{prefix}/confidence_drop"] = float((conf[0, idx] - conf[1, idx]).mean())

    def stat(idx: np.ndarray) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        cell("all", idx, out)
        for c, k in present:
            cell(f"class={c}", idx[y[idx] == k], out)
        return out

    return stat


def _cell(est: dict[str, Estimate], prefix: str, n: int) -> dict[str, Any]:
    """One cell as JSON: n, each version's accuracy / confidence, the paired drops."""
    out: dict[str, Any] = {"n": n}
    for name in VERSIONS:
        out[name] = {m: est[f"{prefix}/{name}/{m}"].to_dict() for m in ("accuracy", "confidence")}
    for m in ("accuracy_drop", "confidence_drop"):
        out[m] = est[f"{prefix}/{m}"].to_dict()
    return out


def summarise(
    probs: np.ndarray, y: np.ndarray, classes: Sequence[str], settings: ShortcutSettings
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(overall cell, per-class cells) from calibrated probabilities [3, M, C] (VERSIONS order) and
    targets y [M]; each cell judged by `judge` ("retained", "uses_context", "reason")."""
    correct = probs.argmax(axis=2) == y[None, :]
    conf = probs[:, np.arange(len(y)), y]
    est = bootstrap_metrics(_stat(correct, conf, y, classes), y, settings.n_boot, settings.seed)
    chance = 1.0 / len(classes)

    def judged(prefix: str, n: int, min_n: int) -> dict[str, Any]:
        c = _cell(est, prefix, n)
        flag, retained, reason = judge(
            c["intact"]["accuracy"]["value"],
            c["removed"]["accuracy"]["value"],
            chance,
            n,
            min_n,
            settings,
        )
        return {**c, "retained": retained, "uses_context": flag, "reason": reason}

    overall = judged("all", len(y), settings.min_rows)
    per_class = {
        c: judged(f"class={c}", int((y == k).sum()), settings.min_class_rows)
        for k, c in enumerate(classes)
        if (y == k).any()
    }
    return overall, per_class


# ------------------------------------------------------------------------------ the result


@dataclass
class ShortcutResult:
    """What the shortcut check found (metrics.json "shortcut"; see the module docstring).

    Attributes:
        verdict: "uses_context" | "uses_region" | "undetermined"; reason: one sentence why.
        chance: 1 / C; classes: the scored classes; settings: `ShortcutSettings` as a dict.
        n_rows: rows of the split looked at; n_used: rows whose three versions were classified;
        skipped: reason -> count (no label, label not among the classes, no region, image
            unreadable, region unreadable, region covers nearly the whole image).
        region_fraction: mean share of the image the dilated region covers (None if no row).
        overall, per_class: cells {n, intact|removed|only_region: {accuracy, confidence}
            (Estimate dicts; confidence = mean calibrated probability of the true class),
            accuracy_drop, confidence_drop (paired, intact - removed), retained, uses_context,
            reason}.
        classes_flagged: classes whose own cell is flagged; notes: examples of skipped rows.
        n_embedded: image embeddings computed (3 per used row); seconds: wall time.
    """

    verdict: str
    reason: str
    chance: float
    classes: list[str]
    settings: dict[str, Any]
    n_rows: int
    n_used: int
    skipped: dict[str, int]
    region_fraction: float | None
    overall: dict[str, Any] | None
    per_class: dict[str, dict[str, Any]]
    classes_flagged: list[str]
    notes: list[str]
    n_embedded: int
    seconds: float | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict == "uses_context"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<memory>", command: str = COMMAND
    ) -> ShortcutResult:
        """Inverse of `to_dict`, checked (a ResultFileError names the key and the command)."""
        return cls.from_fields(Fields(data, source, command, "shortcut"))

    @classmethod
    def from_fields(cls, f: Fields) -> ShortcutResult:
        verdict = f.get("verdict", str)
        if verdict not in VERDICTS:
            raise f.error(f"'{f.path('verdict')}' is {verdict!r}, expected one of {VERDICTS}")
        overall = f.obj("overall", nullable=True)
        per_class = f.mapping("per_class")
        for cell in ([overall] if overall is not None else []) + list(per_class.values()):
            _check_cell(cell)
        return f.build(
            cls,
            overall=None if overall is None else overall.data,
            per_class={k: v.data for k, v in per_class.items()},
        )


def _check_cell(f: Fields) -> None:
    f.get("n", int)
    for name in VERSIONS:
        f.obj(name).estimates("accuracy", "confidence")
    f.estimates("accuracy_drop", "confidence_drop")
    f.get("retained", float, type(None))
    f.get("uses_context", bool, type(None))
    f.get("reason", str)


# ------------------------------------------------------------------------------ the check


def _targets(
    rows: Sequence[Any], classes: Sequence[str], skipped: Counter[str]
) -> list[tuple[Any, int]]:
    """(row, class index) of rows with a region and a label among `classes` (the first label, as
    in single-label evaluation); the others are counted in `skipped`."""
    index = {c: k for k, c in enumerate(classes)}
    items = []
    for r in rows:
        if not has_region(r.meta):
            skipped["no region"] += 1
        elif not r.label:
            skipped["no label"] += 1
        elif r.label[0] not in index:
            skipped["label not among the classes"] += 1
        else:
            items.append((r, index[r.label[0]]))
    return items


def shortcut_check(
    bb: Any,
    manifest: Any,
    split: str | None,
    task: Any,
    calibrator: Any,
    transform: Callable,
    settings: ShortcutSettings = ShortcutSettings(),
) -> ShortcutResult:
    """Classify each row's intact / region-removed / only-region versions and judge the model.

    Args:
        bb: the Backbone (its `encode_images`, `mean` for the grey fill; heads apply via `task`).
        manifest: the `Manifest` (image and mask paths resolve against it); split: its split to
            use (None: every row).
        task: the evaluation's single-label `ZeroShotTask` (`task.logits(bb, feats)`).
        calibrator: the evaluation's `Calibrator` (`probabilities(logits, multi_label=False)`).
        transform: PIL image -> Tensor [3, H, W], the evaluation's preprocessing.

    Raises:
        ConfigError: a multi-label task (not supported: there is no single true class to keep).
    """
    if task.ps.multi_label:
        raise ConfigError(
            "the shortcut check needs a single-label prompt set (multi-label tasks are not "
            "supported yet); pass --no-shortcut-check"
        )
    t0 = time.perf_counter()
    rows = _split_rows(manifest, split)
    classes = list(task.classes)
    skipped: Counter[str] = Counter()
    items = _targets(rows, classes, skipped)
    prep = _prepare(bb, manifest, items, transform, settings)
    skipped.update(prep.skipped)
    for note in prep.notes:
        log.warning("shortcut check: skipped %s", note)
    chance = 1.0 / len(classes)
    overall, per_class = None, {}
    if len(prep.y):
        aggregate = getattr(getattr(transform, "tile", None), "aggregate", "lse")
        logits = prep.logits(task, bb, aggregate)
        probs = calibrator.probabilities(logits, False).reshape(3, len(prep.y), len(classes))
        overall, per_class = summarise(probs, prep.y, classes, settings)
    flag = None if overall is None else overall["uses_context"]
    verdict = {True: "uses_context", False: "uses_region", None: "undetermined"}[flag]
    reason = overall["reason"] if overall else "no row of the split has a usable region"
    return ShortcutResult(
        verdict=verdict,
        reason=reason,
        chance=chance,
        classes=classes,
        settings=asdict(settings),
        n_rows=len(rows),
        n_used=len(prep.y),
        skipped=dict(skipped),
        region_fraction=float(np.mean(prep.fractions)) if prep.fractions else None,
        overall=overall,
        per_class=per_class,
        classes_flagged=[c for c, cell in per_class.items() if cell["uses_context"]],
        notes=prep.notes,
        n_embedded=3 * len(prep.y),
        seconds=round(time.perf_counter() - t0, 2),
    )


def describe(r: ShortcutResult) -> str:
    """One sentence for reports and the model card."""
    if r.verdict == "uses_context":
        head = "The model classifies these images from context, not from the annotated finding"
    elif r.verdict == "uses_region":
        head = "The model needs the annotated finding: removing it costs most of its accuracy"
    else:
        head = "The shortcut check could not judge this model"
    flagged = (
        f"; classes that keep their accuracy without the finding: {', '.join(r.classes_flagged)}"
        if r.classes_flagged
        else ""
    )
    return f"{head} ({r.reason}){flagged}."
