"""The one image pipeline: fit geometry, albumentations augmentation presets, normalisation.

Training and every reader of images for a model (evaluate, audit, explain, the fine-tuning feature
cache and validation, the dashboard) use this pipeline; evaluation takes it from `eval_transform`.
Two steps:

1. Geometry: `domainclip.datasets.geometry.plan_fit(w, h, size, fit).apply(...)` puts the image into
   the size x size input with the fit policy (`letterbox`: aspect-preserving resize of the longer
   side and padding with the normalisation mean, so padding is 0 after normalising; `crop`:
   shorter side resized, centre crop, CLIP's eval preprocessing; `stretch`). For square images the
   three policies are the same.
2. Augmentation (training only) at the model's resolution, which is cheap, then normalisation.

Called on a PIL image it returns ``Tensor[3, S, S]``. Called on a dict (MONAI style) it moves a
mask and boxes with the image through the same `Fit` and the same augmentation draw::

    out = tf({"image": pil, "mask": pil_or_None, "boxes": [[x0, y0, x1, y1, cls], ...]})
    out["image"]  Tensor[3, S, S] float32     out["mask"]  Tensor[S, S] uint8 (nearest) | None
    out["boxes"]  boxes in input pixels (clipped; boxes cut off entirely are dropped)
    out["boxes_dropped"]  how many were dropped     out["fit"]  the `Fit` (before augmentation)

Other keys of the dict are passed through unchanged.

`fit: tile` (`domainclip.datasets.tiling`): the image becomes ``Tensor[T, 3, S, S]``, T
overlapping tiles at native resolution (each tile augmented on its own draw); a dict's mask is
``Tensor[T, S, S]``, its boxes one list per tile, its "fit" the `TilePlan`.

Presets:
    ``industrial``: horizontal/vertical flips, 90-degree rotations (surface textures have no
        canonical orientation), mild brightness/contrast.
    ``cxr``: NO horizontal flip (laterality matters: the heart is on the patient's left, and
        markers / devices are side-specific), mild affine (+-5 degrees, small scale and shift),
        brightness/contrast, CLAHE with low probability (mimics different exposure processing).
    ``none``: geometry + normalise only; this is also the eval transform of every preset
        (``train=False``).

Caveat: flips and rotations move objects, so a text that names a position ("upper left") no
longer matches the augmented image; use ``none`` or ``cxr`` geometry for position-bearing texts.
Masks and boxes follow every augmentation, so they never lose their finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from domainclip.datasets.geometry import FIT_POLICIES, Fit, plan_fit
from domainclip.datasets.tiling import TilePlan, TileSettings, plan_tiles
from domainclip.errors import ConfigError, DataError

if TYPE_CHECKING:
    from domainclip.models import Backbone

PRESETS: tuple[str, ...] = ("industrial", "cxr", "none")
DEFAULT_FIT = "letterbox"
INPUT_POLICIES: tuple[str, ...] = (*FIT_POLICIES, "tile")
# What `data.fit` accepts: the policies, and "auto" (fine-tuning picks letterbox or tile from the
# training data, `geometry_report.choose_fit`, and records the choice).
CONFIG_POLICIES: tuple[str, ...] = (*INPUT_POLICIES, "auto")
"""Every `data.fit` / `--fit`: the single-input policies of `plan_fit` plus `tile` (an image as
overlapping tiles at native resolution, `domainclip.datasets.tiling`)."""


def _augmentations(preset: str) -> list[Any]:
    import albumentations as A
    import cv2

    if preset == "industrial":
        return [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    if preset == "cxr":
        return [
            A.Affine(
                rotate=(-5, 5),
                scale=(0.95, 1.05),
                translate_percent=(-0.03, 0.03),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,  # black border: outside the film is no signal
                fill_mask=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.CLAHE(clip_limit=(1.0, 2.0), tile_grid_size=(8, 8), p=0.1),
        ]
    return []


class ImageTransform:
    """Callable ``PIL.Image -> Tensor[3, S, S]`` (float32, normalised), or a sample dict -> dict
    with the mask and boxes moved along (see the module docstring). S = `image_size`.

    Reproducible: two instances built with the same arguments and seed produce the same
    sequence of outputs for the same sequence of inputs. `reseed` gives DataLoader workers
    distinct streams (see `domainclip.datasets.torch_dataset.seed_worker`).
    """

    def __init__(
        self,
        preset: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int | None,
        fit: str = DEFAULT_FIT,
        tile: TileSettings | None = None,
    ) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        self.preset = preset
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.seed = seed
        self.fit = fit
        self.tile = (tile or TileSettings()) if fit == "tile" else None
        # Letterbox padding in the mean colour: exactly 0 after normalising.
        self.fill = tuple(round(m * 255) for m in self.mean)
        augs = _augmentations(preset) if train else []
        # Boxes only need albumentations when something moves them (else: a warning per call).
        self._box_params = (
            A.BboxParams(format="pascal_voc", label_fields=["box_index"]) if augs else None
        )
        self._pipeline = A.Compose(
            [
                *augs,
                A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0),
                ToTensorV2(),
            ],
            bbox_params=self._box_params,
            seed=seed,
        )

    @property
    def tiled(self) -> bool:
        """True for `fit: tile`: images become Tensor[T, 3, S, S] (T tiles per image)."""
        return self.tile is not None

    @property
    def input(self) -> dict[str, Any]:
        """The input geometry this transform produces: {"fit": policy, "image_size": S} (and
        "tile": {size, overlap, aggregate} for `fit: tile`)."""
        out: dict[str, Any] = {"fit": self.fit, "image_size": self.image_size}
        if self.tile is not None:
            out["tile"] = self.tile.to_dict()
        return out

    def plan(self, width: int, height: int) -> Fit:
        """The `Fit` of a width x height image into this transform's input (not for `tile`:
        see `plan_tiles`)."""
        if self.tile is not None:
            raise ConfigError("fit 'tile' has one Fit per tile: use the transform's plan_tiles(w, h)")
        return plan_fit(width, height, self.image_size, self.fit)

    def plan_tiles(self, width: int, height: int) -> TilePlan:
        """The `TilePlan` of a width x height image under this transform (`fit: tile`)."""
        return plan_tiles(width, height, self.image_size, self.tile)

    def reseed(self, seed: int | None) -> None:
        """Restart the augmentation random stream from `seed`."""
        self.seed = seed
        self._pipeline.set_random_seed(seed)

    def __call__(self, sample: Image.Image | Mapping[str, Any]) -> Any:
        """Transform one image (-> Tensor[3, S, S] float32) or one sample dict (-> dict)."""
        if isinstance(sample, Image.Image):
            return self._run(sample, None, [])["image"]
        if not isinstance(sample, Mapping) or not isinstance(sample.get("image"), Image.Image):
            raise DataError(
                "a transform takes a PIL image or a dict with a PIL 'image' (and optional 'mask', "
                f"'boxes'), got {type(sample).__name__}"
            )
        out = dict(sample)
        out.update(self._run(sample["image"], sample.get("mask"), sample.get("boxes") or []))
        return out

    def _run(self, img: Image.Image, mask: Any, boxes: Sequence[Sequence[Any]]) -> dict[str, Any]:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.tile is not None:
            return self._run_tiles(img, mask, boxes)
        fit = self.plan(*img.size)
        # np.array copies: PIL buffers are read-only, torch wants writable arrays
        data: dict[str, Any] = {"image": np.array(fit.apply(img, fill=self.fill))}
        if mask is not None:
            data["mask"] = np.array(fit.apply(_mask_image(mask, img.size), fill=0, nearest=True))
        mapped, kept = _map_boxes(fit, boxes)
        if self._box_params is not None:
            data.update(bboxes=np.asarray(mapped, dtype=np.float64).reshape(-1, 4), box_index=kept)
        out = self._pipeline(**data)
        if self._box_params is not None:
            mapped = [list(map(float, b)) for b in out["bboxes"]]
            kept = [int(i) for i in out["box_index"]]
        moved = [[*b, *boxes[i][4:]] for b, i in zip(mapped, kept, strict=True)]
        return {
            "image": out["image"].float(),
            "mask": out.get("mask"),
            "boxes": moved,
            "boxes_dropped": len(boxes) - len(moved),
            "fit": fit,
        }

    def _run_tiles(self, img: Image.Image, mask: Any, boxes: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """`fit: tile`: every tile through the pipeline (each its own augmentation draw).

        Returns image Tensor[T, 3, S, S], mask Tensor[T, S, S] | None, boxes: per tile the boxes in
        its input pixels (extra fields kept), boxes_dropped (boxes no tile holds), fit: the TilePlan.
        """
        plan = self.plan_tiles(*img.size)
        crops = plan.crops(img, fill=self.fill)
        masks = [None] * len(plan) if mask is None else list(plan.map_mask(np.asarray(_mask_image(mask, img.size))))
        per_box = [plan.map_box(tuple(float(v) for v in b[:4])) for b in boxes]
        images, out_masks, out_boxes = [], [], []
        for k, crop in enumerate(crops):
            tile_boxes = [[*m[k], *b[4:]] for m, b in zip(per_box, boxes, strict=True) if m[k] is not None]
            part = self._run_one(crop, masks[k], tile_boxes)
            images.append(part["image"])
            out_masks.append(part["mask"])
            out_boxes.append(part["boxes"])
        return {
            "image": _stack(images),
            "mask": None if mask is None else _stack(out_masks),
            "boxes": out_boxes,
            "boxes_dropped": sum(all(m is None for m in mb) for mb in per_box),
            "fit": plan,
        }

    def _run_one(self, tile: Image.Image, mask: np.ndarray | None, boxes: list[list[Any]]) -> dict[str, Any]:
        """One tile's input (already size x size) through augmentation and normalisation."""
        data: dict[str, Any] = {"image": np.array(tile)}
        if mask is not None:
            data["mask"] = np.array(mask)
        if self._box_params is not None:
            data.update(
                bboxes=np.asarray([b[:4] for b in boxes], dtype=np.float64).reshape(-1, 4),
                box_index=list(range(len(boxes))),
            )
        out = self._pipeline(**data)
        if self._box_params is not None:
            boxes = [[*map(float, b), *boxes[int(i)][4:]] for b, i in zip(out["bboxes"], out["box_index"], strict=True)]
        return {"image": out["image"].float(), "mask": out.get("mask"), "boxes": boxes}

    def __repr__(self) -> str:
        tile = f", tile={self.tile.to_dict()}" if self.tile is not None else ""
        return (
            f"ImageTransform(preset={self.preset!r}, fit={self.fit!r}, "
            f"image_size={self.image_size}, train={self.train}, seed={self.seed}{tile})"
        )


def _stack(items: list[Any]) -> Any:
    """torch.stack (torch imported lazily, as albumentations' ToTensorV2 does)."""
    import torch

    return torch.stack([i if isinstance(i, torch.Tensor) else torch.as_tensor(i) for i in items])


def _mask_image(mask: Any, size: tuple[int, int]) -> Image.Image:
    """A mask (PIL image or 2-D array; non-zero = region) as a single-channel PIL image."""
    if isinstance(mask, Image.Image):
        pil = mask.convert("L") if mask.mode in ("1", "RGB", "RGBA", "P", "LA") else mask
    else:
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise DataError(f"a mask must be 2-D (height, width), got shape {arr.shape}")
        pil = Image.fromarray(arr.astype(np.uint8) if arr.dtype == bool else arr)
    if pil.size != size:
        raise DataError(
            f"the mask is {pil.size[0]}x{pil.size[1]} but its image is {size[0]}x{size[1]}: "
            "a mask must have the size of its image"
        )
    return pil


def _map_boxes(
    fit: Fit, boxes: Sequence[Sequence[Any]]
) -> tuple[list[tuple[float, ...]], list[int]]:
    """Boxes [x0, y0, x1, y1, ...] in original pixels -> (input-pixel boxes, their indices),
    without the boxes the fit cuts off entirely."""
    mapped, kept = [], []
    for i, box in enumerate(boxes):
        if len(box) < 4:
            raise DataError(f"a box needs [xmin, ymin, xmax, ymax, (class)], got {list(box)!r}")
        x0, y0, x1, y1 = fit.map_box(tuple(float(v) for v in box[:4]))
        if x1 > x0 and y1 > y0:
            mapped.append((x0, y0, x1, y1))
            kept.append(i)
    return mapped, kept


def build_transform(
    preset: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    seed: int | None = None,
    fit: str = DEFAULT_FIT,
    tile: TileSettings | None = None,
) -> ImageTransform:
    """Build the transform for a domain preset.

    Args:
        preset: "industrial", "cxr" or "none".
        image_size: output side length S (e.g. the backbone's `image_size`).
        mean, std: per-channel normalisation in 0..1 units (the backbone's `mean`/`std`).
        train: augment (True) or the deterministic eval transform (False).
        seed: seed of the augmentation stream; None draws fresh entropy.
        fit: geometry policy, one of `INPUT_POLICIES` (letterbox, crop, stretch, tile).
        tile: the tile settings of `fit: tile` (None: `TileSettings()` defaults).

    Returns:
        Callable mapping an RGB PIL image to Tensor[3, S, S] (or a sample dict to a dict).
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown transform preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    if fit not in INPUT_POLICIES:
        raise ConfigError(f"unknown fit policy {fit!r}; choose one of {', '.join(INPUT_POLICIES)}")
    if not isinstance(image_size, int | np.integer) or int(image_size) < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need 3 values each (std > 0), got {mean!r}, {std!r}")
    return ImageTransform(preset, int(image_size), mean, std, train, seed, fit, tile)


def eval_transform(
    bb: Backbone, fit: str = DEFAULT_FIT, image_size: int | None = None, tile: TileSettings | None = None
) -> ImageTransform:
    """THE evaluation transform of a backbone: `fit` geometry at `image_size` (None: the
    backbone's native `image_size`), normalised with its mean/std, no augmentation.

    Every reader of images for a model takes its transform from here (or from a run:
    `domainclip.runs.resolve_model(...).preprocess`, which calls this with the run's settings).
    """
    return build_transform(
        "none", bb.image_size if image_size is None else image_size, bb.mean, bb.std,
        train=False, fit=fit, tile=tile,
    )


def train_transform(
    bb: Backbone,
    preset: str,
    fit: str = DEFAULT_FIT,
    image_size: int | None = None,
    seed: int | None = None,
    tile: TileSettings | None = None,
) -> ImageTransform:
    """The training transform: `eval_transform`'s geometry plus the `preset` augmentations."""
    return build_transform(
        preset, bb.image_size if image_size is None else image_size, bb.mean, bb.std,
        train=True, seed=seed, fit=fit, tile=tile,
    )
