"""Audit figures (matplotlib, Agg backend): score-shift distributions and flip examples."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from domainclip.audit.scores import ScoreTable

if TYPE_CHECKING:
    from domainclip.audit.results import AuditReport, FlipExample

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_shift_distributions(
    table: ScoreTable, report: AuditReport, reference: str, path: Path
) -> Path:
    """One histogram per framing of the per-image shift of the target-class probability.

    The dashed line is 0 (no change), the solid line the mean shift, the shaded band the gate's
    +-max_abs_mean_shift.
    """
    plt = _pyplot()
    others = [f for f in table.framings if f != reference]
    cols = min(3, len(others))
    nrows = int(np.ceil(len(others) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    ref = table.scores[table.k(reference)]
    tau = report.gate.thresholds.max_abs_mean_shift if report.gate.thresholds else None
    shifts = [table.scores[table.k(f)] - ref for f in others]
    lim = max(0.05, max(float(np.abs(d).max()) for d in shifts) * 1.05)
    bins = np.linspace(-lim, lim, 41)
    for ax, name, d in zip(axes.flat, others, shifts, strict=False):
        cell = report.main.comparisons[name]["overall"]
        ax.hist(d, bins=bins, color="#4C72B0", alpha=0.85)
        if tau is not None:
            ax.axvspan(-tau, tau, color="#55A868", alpha=0.15, label=f"|shift| <= {tau}")
        ax.axvline(0, color="k", ls="--", lw=1)
        ax.axvline(float(d.mean()), color="#C44E52", lw=2, label="mean shift")
        ms, fr = cell["mean_shift"], cell["flip_rate"]
        ci = ms["ci95"]
        ci_txt = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        ax.set_title(
            f"{name} vs {reference}\nmean {ms['value']:+.3f}{ci_txt}, flips {fr['value']:.1%}",
            fontsize=9,
        )
        ax.set_xlabel("shift of target-class probability")
        ax.set_ylabel("images")
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(others) :]:
        ax.axis("off")
    fig.suptitle(f"Score shifts per framing (n = {table.n} images)", fontsize=11)
    # Fixed margins (in inches) instead of tight_layout, which measures every text: a third of
    # the plotting time.
    height = 3.2 * nrows
    fig.subplots_adjust(
        left=0.07,
        right=0.98,
        bottom=0.6 / height,
        top=1 - 0.95 / height,
        wspace=0.3,
        hspace=1.35 / 3.2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_flip_examples(
    examples: list[FlipExample], path: Path, limit: int = 8, paths: dict[int, str] | None = None
) -> Path | None:
    """Thumbnails of the flipped images with both decisions; None when nothing flipped.
    `paths`: row -> image file (examples name images by row unless the audit showed paths)."""
    from domainclip.datasets.imageio import load_image
    from domainclip.errors import DataError

    # Round-robin over framings (each list is already sorted by |shift|), so one very unstable
    # framing does not fill every slot.
    by_framing: dict[str, list[FlipExample]] = {}
    for ex in examples:
        by_framing.setdefault(ex.framed.framing, []).append(ex)
    chosen: list[FlipExample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in by_framing.values()):
        chosen += [v[depth] for v in by_framing.values() if depth < len(v)]
        depth += 1
    chosen = chosen[:limit]
    if not chosen:
        return None
    plt = _pyplot()
    cols = min(4, len(chosen))
    nrows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.9 * nrows), squeeze=False)
    for ax, ex in zip(axes.flat, chosen, strict=False):
        try:
            img = load_image((paths or {}).get(ex.row) or ex.path, max_side=256)
            ax.imshow(np.asarray(img))
        except DataError as exc:  # the file may have moved since the audit
            log.warning("flip example %s not shown: %s", ex.image, exc)
        ref, fr = ex.reference, ex.framed
        ax.set_title(
            f"{Path(ex.image).name} (label {ex.target})\n"
            f"{ref.framing}: {ref.decision} {ref.decision_prob:.2f}\n"
            f"{fr.framing}: {fr.decision} {fr.decision_prob:.2f}",
            fontsize=8,
        )
        ax.axis("off")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.08, hspace=0.45)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
