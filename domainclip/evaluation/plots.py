"""PNG plots of evaluation results (matplotlib object API: Agg rendering, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """cm int [C, C] (rows true, columns predicted) as a row-normalised heat map with raw counts."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = 2.5 + 0.55 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if frac[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_forgetting_curve(
    alphas: Sequence[float],
    target: Sequence[float],
    reference: Sequence[float],
    path: str | Path,
    target_name: str = "target",
    reference_name: str = "reference",
    metric: str = "accuracy",
    target_ci: Sequence[Sequence[float] | None] | None = None,
    reference_ci: Sequence[Sequence[float] | None] | None = None,
) -> Path:
    """Target- and reference-task metric against the interpolation weight alpha (0 base, 1 fine-tuned),
    with CI bands where given."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for ys, ci, name, color in (
        (target, target_ci, target_name, "#4C72B0"),
        (reference, reference_ci, reference_name, "#C44E52"),
    ):
        ax.plot(alphas, ys, "o-", color=color, label=name)
        if ci is not None and all(c is not None for c in ci):
            ax.fill_between(alphas, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15)
    ax.set_xlabel("alpha (0 = base weights, 1 = fine-tuned weights)")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Forgetting: weight-space interpolation (WiSE-FT)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
