"""Image transforms per domain: albumentations augmentation presets, seeded and reproducible.

Every transform maps an RGB `PIL.Image` to a normalised ``Tensor[3, image_size, image_size]``.
All presets first resize the shortest side to `image_size` with PIL's antialiased bicubic filter
and centre-crop (the same geometry as open_clip's / CLIP's eval preprocessing), so train and eval
see the same field of view; augmentations then run at the model's resolution, which is cheap.

Presets:
    ``industrial``: horizontal/vertical flips, 90-degree rotations (surface textures have no
        canonical orientation), mild brightness/contrast.
    ``cxr``: NO horizontal flip (laterality matters: the heart is on the patient's left, and
        markers / devices are side-specific), mild affine (+-5 degrees, small scale and shift),
        brightness/contrast, CLAHE with low probability (mimics different exposure processing).
    ``none``: resize + centre crop + normalise only; this is also the eval transform of every
        preset (``train=False``).

Caveat: flips and rotations move objects, so a text that names a position ("upper left") no
longer matches the augmented image; use ``none`` or ``cxr`` geometry for position-bearing texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from domainclip.errors import ConfigError

PRESETS: tuple[str, ...] = ("industrial", "cxr", "none")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shortest side to `size` (bicubic, antialiased) and centre-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


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
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.CLAHE(clip_limit=(1.0, 2.0), tile_grid_size=(8, 8), p=0.1),
        ]
    return []


class ImageTransform:
    """Callable ``PIL.Image -> Tensor[3, image_size, image_size]`` (float32, normalised).

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
    ) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        self.preset = preset
        self.image_size = int(image_size)
        self.train = train
        self.seed = seed
        augs = _augmentations(preset) if train else []
        self._pipeline = A.Compose(
            [
                *augs,
                A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
                ToTensorV2(),
            ],
            seed=seed,
        )

    def reseed(self, seed: int | None) -> None:
        """Restart the augmentation random stream from `seed`."""
        self.seed = seed
        self._pipeline.set_random_seed(seed)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Transform one image. Returns Tensor[3, image_size, image_size] float32."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(resize_center_crop(img, self.image_size))
        return self._pipeline(image=arr)["image"].float()

    def __repr__(self) -> str:
        return (
            f"ImageTransform(preset={self.preset!r}, image_size={self.image_size}, "
            f"train={self.train}, seed={self.seed})"
        )


def build_transform(
    preset: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    seed: int | None = None,
) -> ImageTransform:
    """Build the transform for a domain preset.

    Args:
        preset: "industrial", "cxr" or "none".
        image_size: output side length (the backbone's `image_size`).
        mean, std: per-channel normalisation in 0..1 units (the backbone's `mean`/`std`).
        train: augment (True) or the deterministic eval transform (False).
        seed: seed of the augmentation stream; None draws fresh entropy.

    Returns:
        Callable mapping an RGB PIL image to Tensor[3, image_size, image_size].
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown transform preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    if int(image_size) < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need 3 values each (std > 0), got {mean!r}, {std!r}")
    return ImageTransform(preset, image_size, mean, std, train, seed)
