"""Overlays (PNG heatmap over the image with a colour bar), raw maps (.npy) and token HTML.

matplotlib is used through `Figure` + the Agg canvas directly, never pyplot: no global figure
state, safe in worker threads (the dashboard) and on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_map(smap: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write the raw map [H, W] as float32 .npy (the dashboard re-renders it with its own opacity)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(smap, dtype=np.float32))
    return path


def overlay_figure(
    view: np.ndarray,
    smap: np.ndarray,
    *,
    title: str = "",
    alpha: float = 0.5,
    diverging: bool = False,
    label: str = "attribution",
):
    """A matplotlib Figure (Agg canvas): the image with the map on top and a colour bar.

    Args:
        view: [H, W, 3] uint8, the image as the model saw it (`ModelInput.view`).
        smap: [H, W] map at the same resolution.
        title: figure title (e.g. method, prompt and score).
        alpha: opacity of the heatmap.
        diverging: True for signed maps where 0 is neutral (contrast maps, IG, occlusion): a
            blue-white-red colour map symmetric around 0, saturating at the 99.5th percentile of
            |map|. Otherwise `inferno` from min to max.
        label: colour-bar label (units of the map).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    smap = np.asarray(smap, dtype=np.float32)
    if smap.shape != view.shape[:2]:
        raise ValueError(f"map {smap.shape} and image {view.shape[:2]} differ in size")
    fig = Figure(figsize=(5.2, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(view)
    if diverging:
        # Pixel-level maps (IG) have a few extreme pixels; scaling to the 99.5th percentile keeps
        # the rest visible (the colour bar saturates instead).
        peak = float(np.percentile(np.abs(smap), 99.5)) or float(np.abs(smap).max()) or 1.0
        im = ax.imshow(smap, cmap="RdBu_r", vmin=-peak, vmax=peak, alpha=alpha)
    else:
        lo, hi = float(smap.min()), float(smap.max())
        im = ax.imshow(
            smap, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, alpha=alpha
        )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def render_overlay(
    view: np.ndarray, smap: np.ndarray, path: str | os.PathLike[str], **kwargs: object
) -> Path:
    """Write `overlay_figure(view, smap, **kwargs)` as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(view, smap, **kwargs).savefig(path, format="png")
    return path


def overlay_png(view: np.ndarray, smap: np.ndarray, **kwargs: object) -> bytes:
    """`overlay_figure(view, smap, **kwargs)` as PNG bytes (in memory, e.g. for uploads)."""
    import io

    buf = io.BytesIO()
    overlay_figure(view, smap, **kwargs).savefig(buf, format="png")
    return buf.getvalue()


def save_html(
    fragment: str, path: str | os.PathLike[str], title: str = "token attribution"
) -> Path:
    """Wrap an HTML fragment (e.g. `TokenAttribution.to_html()`) in a minimal page."""
    import html

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f'<body style="font-family: sans-serif; line-height: 1.8">{fragment}</body></html>\n'
    )
    path.write_text(page, encoding="utf-8")
    return path
