"""Images, masks and boxes in the model's view (the square input it sees).

Maps are computed at the model's input resolution. Images go through the one image pipeline
(`domainclip.datasets.transforms`): the `preprocess` given (a run's, from
`domainclip.runs.resolve_model(...).preprocess`) or `eval_transform(bb)` (letterbox at the native
size). Masks and boxes come in original pixels and follow the image through the same `Fit`
(nearest-neighbour for masks), so they land exactly where the model sees their finding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from domainclip.datasets.geometry import Fit
from domainclip.datasets.tiling import TilePlan
from domainclip.datasets.transforms import ImageTransform, eval_transform
from domainclip.explain.errors import ExplainError
from domainclip.models import Backbone


@dataclass
class ModelInput:
    """One image prepared for a backbone.

    Attributes:
        pixels: [1, 3, S, S] normalised tensor on the backbone's device.
        view: [S, S, 3] uint8, what the model sees (de-normalised pixels), for overlays.
        original_size: (width, height) of the image before preprocessing.
        path: source file, if any.
        fit: where the original pixels landed in the input (`Fit.to_original` maps a saliency
            map back to the original image).
        tiles: for a tiling transform (`fit: tile`): the `TilePlan`; then `pixels` is
            [T, 3, S, S] (one row per tile), `view` the original image [H0, W0, 3], `fit` None,
            and maps are explained per tile and stitched into original pixels.
    """

    pixels: torch.Tensor
    view: np.ndarray
    original_size: tuple[int, int]
    path: str | None = None
    fit: Fit | None = None
    tiles: TilePlan | None = None


def to_view(bb: Backbone, pixels: torch.Tensor) -> np.ndarray:
    """[1 or none, 3, H, W] normalised -> [H, W, 3] uint8 RGB."""
    x = pixels.detach().float().cpu().reshape(3, *pixels.shape[-2:])
    mean = torch.tensor(bb.mean).view(3, 1, 1)
    std = torch.tensor(bb.std).view(3, 1, 1)
    rgb = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (rgb * 255 + 0.5).astype(np.uint8)


def prepare_image(
    bb: Backbone,
    image: str | os.PathLike[str] | Image.Image,
    preprocess: ImageTransform | None = None,
) -> ModelInput:
    """Read (robustly, via `domainclip.datasets.load_image`) and preprocess one image with
    `preprocess` (default `eval_transform(bb)`).

    Raises:
        ImageReadError (a DomainClipError): the file is missing or does not decode.
    """
    from domainclip.datasets import load_image

    path = None
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        # Lexical, like Manifest.image_path: resolving would raise RuntimeError on a symlink loop
        # (Python 3.11) where load_image names the file and says what is wrong.
        path = os.path.abspath(Path(image).expanduser())
        pil = load_image(path)
    tf = preprocess or eval_transform(bb)
    if tf.tiled:
        return ModelInput(
            pixels=tf(pil).to(bb.device),
            view=np.asarray(pil, dtype=np.uint8),
            original_size=pil.size,
            path=path,
            tiles=tf.plan_tiles(*pil.size),
        )
    pixels = tf(pil).unsqueeze(0).to(bb.device)
    return ModelInput(
        pixels=pixels,
        view=to_view(bb, pixels),
        original_size=pil.size,
        path=path,
        fit=tf.plan(*pil.size),
    )


def original_map(inp: ModelInput, smap: np.ndarray) -> np.ndarray:
    """A saliency map in the ORIGINAL image's pixels [H0, W0]: a single input's map [S, S] mapped
    back through its `Fit` (pixels the model never saw, e.g. cropped ends: NaN); a tiled input's
    map is already stitched into original pixels."""
    smap = np.asarray(smap, dtype=np.float64)
    if inp.tiles is not None or inp.fit is None:
        return smap
    return inp.fit.to_original(smap)


def mask_to_view(
    bb: Backbone, mask: np.ndarray, preprocess: ImageTransform | None = None
) -> np.ndarray:
    """Binary mask in original pixels [H0, W0] -> bool [S, S] aligned with the model input
    (the image's `Fit` under `preprocess`, default `eval_transform(bb)`; nearest-neighbour)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ExplainError(f"a mask must be 2-D (height, width), got shape {mask.shape}")
    tf = preprocess or eval_transform(bb)
    if tf.tiled:  # tiled maps are stitched into original pixels: the mask stays as it is
        return mask > 0
    fit = tf.plan(mask.shape[1], mask.shape[0])
    pil = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))
    return np.asarray(fit.apply(pil, fill=0, nearest=True)) > 0


def boxes_to_mask(boxes: list, width: int, height: int) -> np.ndarray:
    """Boxes [[xmin, ymin, xmax, ymax, (class)], ...] in pixels -> bool mask [height, width].

    Coordinates follow the manifest convention (VOC-style inclusive pixel corners, clipped to the
    image). An empty box list gives an all-False mask.
    """
    if not isinstance(boxes, (list, tuple)):
        raise ExplainError(f"boxes must be a list like [[xmin, ymin, xmax, ymax], ...], got {boxes!r}")
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        try:
            if len(box) < 4:
                raise ValueError("fewer than four values")
            x0, y0, x1, y1 = (round(float(v)) for v in box[:4])
        except (TypeError, ValueError, OverflowError):  # a number, a string, NaN, infinity
            raise ExplainError(
                f"a box needs four finite numbers [xmin, ymin, xmax, ymax], got {box!r}"
            ) from None
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(width - 1, x1), min(height - 1, y1)
        if x1 >= x0 and y1 >= y0:
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def region_from_meta(
    meta: dict[str, str], root: Path, original_size: tuple[int, int]
) -> tuple[np.ndarray, str] | None:
    """The ground-truth region of a manifest row in original pixels: (mask, "mask"|"boxes").

    A pixel mask (meta `mask`, a PNG path relative to the manifest) wins over boxes (meta
    `boxes`, JSON). None when the row has neither.
    """
    if meta.get("mask"):
        from domainclip.datasets import load_mask

        path = Path(os.path.abspath(root / Path(meta["mask"]).expanduser()))
        mask = load_mask(path)  # every failure is an ImageReadError naming the file
        if mask.shape != (original_size[1], original_size[0]):
            raise ExplainError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{original_size[0]}x{original_size[1]}"
            )
        return mask, "mask"
    if meta.get("boxes"):
        try:
            boxes = json.loads(meta["boxes"])
        except json.JSONDecodeError as exc:
            raise ExplainError(f"meta 'boxes' is not JSON: {meta['boxes'][:80]!r}") from exc
        return boxes_to_mask(boxes, *original_size), "boxes"
    return None
