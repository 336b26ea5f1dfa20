"""Where an image's pixels land in the model's square input: the fit policies, as pure geometry.

One `Fit` describes the whole mapping for one image, so the image, its mask and its boxes go
through exactly the same geometry (and a saliency map can be mapped back):

    x_input = x_original * sx + dx        y_input = y_original * sy + dy

with the input window [0, size) x [0, size). Policies:

    letterbox  aspect-preserving resize of the LONGER side to `size`, centred, padded: never
               discards a pixel (the default for domain data, whose findings may sit anywhere)
    crop       aspect-preserving resize of the SHORTER side to `size`, centre crop (CLIP's eval
               preprocessing): cuts the ends of a non-square image off
    stretch    independent x/y resize to size x size: keeps every pixel, distorts shapes

Tiling (several overlapping fits per image) builds on the same mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from domainclip.errors import ConfigError

FIT_POLICIES: tuple[str, ...] = ("letterbox", "crop", "stretch")


@dataclass(frozen=True)
class Fit:
    """The affine map of one `width` x `height` image into the `size` x `size` input."""

    policy: str
    size: int
    width: int
    height: int
    sx: float
    sy: float
    dx: float
    dy: float

    @property
    def resized(self) -> tuple[int, int]:
        """(w, h) of the image after resizing, before padding or cropping."""
        return max(1, round(self.width * self.sx)), max(1, round(self.height * self.sy))

    def map_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """An original-pixel box (x0, y0, x1, y1) in input pixels, clipped to the input window
        (an empty box, x0 >= x1 or y0 >= y1, when it falls outside)."""
        x0, y0, x1, y1 = box
        ix0, ix1 = x0 * self.sx + self.dx, x1 * self.sx + self.dx
        iy0, iy1 = y0 * self.sy + self.dy, y1 * self.sy + self.dy
        c = float(self.size)
        return (min(max(ix0, 0.0), c), min(max(iy0, 0.0), c), min(max(ix1, 0.0), c), min(max(iy1, 0.0), c))

    def box_visibility(self, box: tuple[float, float, float, float]) -> tuple[float, float]:
        """(fraction of the box's area inside the input, shorter side in input pixels).

        A fraction of 0 means the preprocessing cut the box off entirely; a shorter side of a few
        pixels means the finding is too small to see at this resolution.
        """
        x0, y0, x1, y1 = box
        area = max(0.0, (x1 - x0) * self.sx) * max(0.0, (y1 - y0) * self.sy)
        ix0, iy0, ix1, iy1 = self.map_box(box)
        w, h = max(0.0, ix1 - ix0), max(0.0, iy1 - iy0)
        return (w * h / area if area > 0 else 0.0), min(w, h)

    def apply(self, img: Image.Image, fill: tuple[int, ...] | int = 0, nearest: bool = False) -> Image.Image:
        """The image (or a mask, with `nearest`) as the size x size input.

        Args:
            fill: value of the letterbox padding (e.g. the normalisation mean, so padding is 0
                after normalising; 0 for masks).
            nearest: nearest-neighbour resampling (label masks must keep their values).
        """
        resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
        w, h = self.resized
        out = img.resize((w, h), resample) if (w, h) != img.size else img
        canvas = Image.new(out.mode, (self.size, self.size), fill)
        canvas.paste(out, (round(self.dx), round(self.dy)))
        return canvas

    def to_original(self, input_map: np.ndarray) -> np.ndarray:
        """A map over the input [size, size] resampled to the original [height, width] grid
        (outside the input window, e.g. the cropped ends: NaN)."""
        ys = (np.arange(self.height) + 0.5) * self.sy + self.dy - 0.5
        xs = (np.arange(self.width) + 0.5) * self.sx + self.dx - 0.5
        yi, xi = np.round(ys).astype(int), np.round(xs).astype(int)
        inside_y, inside_x = (yi >= 0) & (yi < self.size), (xi >= 0) & (xi < self.size)
        out = np.full((self.height, self.width), np.nan, dtype=np.float64)
        sub = input_map[np.ix_(yi[inside_y], xi[inside_x])]
        out[np.ix_(inside_y, inside_x)] = sub
        return out


def plan_fit(width: int, height: int, size: int, policy: str = "letterbox") -> Fit:
    """The `Fit` of a `width` x `height` image into a `size` x `size` input under `policy`."""
    if policy not in FIT_POLICIES:
        raise ConfigError(f"unknown fit policy {policy!r}; choose one of {', '.join(FIT_POLICIES)}")
    if width < 1 or height < 1 or size < 1:
        raise ConfigError(f"cannot fit a {width}x{height} image into {size} px")
    if policy == "stretch":
        return Fit(policy, size, width, height, size / width, size / height, 0.0, 0.0)
    scale = size / (max(width, height) if policy == "letterbox" else min(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return Fit(policy, size, width, height, w / width, h / height, _centre(w, size), _centre(h, size))


def _centre(extent: int, size: int) -> float:
    """Integer offset that centres `extent` px in the window (what `Fit.apply` pastes at).

    Padding puts the odd pixel after the image; cropping drops the odd pixel at the end, as a
    centre crop of (extent - size) // 2 from the start does (the eval preprocessing of CLIP).
    """
    return float((size - extent) // 2 if extent <= size else -((extent - size) // 2))
