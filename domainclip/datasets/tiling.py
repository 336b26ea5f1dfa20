"""Tiling: an image much larger than the model input seen as overlapping tiles at native resolution.

A `TilePlan` cuts a `width` x `height` image into overlapping `tile` x `tile` windows (original
pixels), each put into the `size` x `size` model input by its own `Fit` (scale size / tile, the
same for every tile, so a finding keeps its size in every tile):

    stride   = tile * (1 - overlap)  (at least 1 px)
    per axis n = 1 + ceil((L - tile) / stride) windows, spread evenly from 0 to L - tile, so every
             pixel is covered and the last window is flush with the image's edge
    L < tile one window over the whole axis (the rest of the input is padding, mean colour)

An image that fits into one tile on both axes is one tile, letterboxed (`plan_fit(..., "letterbox")`)
as the other policies would. Everything is pure geometry (no model): `TilePlan.crops(img)` gives
the tiles' inputs, `map_box` / `map_mask` move annotations into each tile, `stitch` averages maps
over the tiles' input windows back into original pixels (overlaps averaged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from domainclip.datasets.geometry import Fit, plan_fit
from domainclip.errors import ConfigError

TILE_AGGREGATES: tuple[str, ...] = ("lse", "max", "mean")
"""How tile scores become an image's score: `lse` = log-mean-exp of the tile logits (a smooth
maximum: "is the finding in some tile?"), `max`, `mean` (global descriptions). See docs/DESIGN.md."""


@dataclass(frozen=True)
class TileSettings:
    """How `fit: tile` cuts images.

    size: tile side in ORIGINAL pixels (None: the model input size, i.e. native resolution).
    overlap: fraction of a tile shared with its neighbour, in [0, 0.9].
    aggregate: one of `TILE_AGGREGATES` (how tile logits become image logits).
    """

    size: int | None = None
    overlap: float = 0.25
    aggregate: str = "lse"

    def __post_init__(self) -> None:
        if self.size is not None and int(self.size) < 1:
            raise ConfigError(f"data.tile.size must be a positive number of pixels, got {self.size!r}")
        if not 0.0 <= float(self.overlap) <= 0.9:
            raise ConfigError(f"data.tile.overlap must be in [0, 0.9], got {self.overlap!r}")
        if self.aggregate not in TILE_AGGREGATES:
            raise ConfigError(
                f"unknown data.tile.aggregate {self.aggregate!r}; choose one of {', '.join(TILE_AGGREGATES)}"
            )

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "overlap": float(self.overlap), "aggregate": self.aggregate}


@dataclass(frozen=True)
class Tile:
    """One tile: its window `box` (x0, y0, x1, y1) in original pixels (integers, x1/y1 exclusive)
    and the `Fit` of that window (a `box`-sized image) into the size x size input."""

    box: tuple[int, int, int, int]
    fit: Fit


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one `width` x `height` image (row-major: left to right, top to bottom)."""

    width: int
    height: int
    size: int
    tile: int
    overlap: float
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def crops(self, img: Image.Image, fill: tuple[int, ...] | int = 0, nearest: bool = False) -> list[Image.Image]:
        """Each tile's size x size input (the window cropped, scaled, padded with `fill`)."""
        if img.size != (self.width, self.height):
            raise ConfigError(
                f"a {img.size[0]}x{img.size[1]} image does not match its tile plan "
                f"({self.width}x{self.height})"
            )
        return [t.fit.apply(img.crop(t.box), fill=fill, nearest=nearest) for t in self.tiles]

    def map_box(self, box: tuple[float, float, float, float]) -> list[tuple[float, float, float, float] | None]:
        """An original-pixel box in each tile's input pixels (None where the tile misses it)."""
        out: list[tuple[float, float, float, float] | None] = []
        x0, y0, x1, y1 = box
        for t in self.tiles:
            tx, ty = t.box[0], t.box[1]
            m = t.fit.map_box((x0 - tx, y0 - ty, x1 - tx, y1 - ty))
            inside = _window_clip(t, (x0, y0, x1, y1))
            out.append(m if inside and m[2] > m[0] and m[3] > m[1] else None)
        return out

    def map_mask(self, mask: np.ndarray) -> np.ndarray:
        """A [height, width] mask as each tile's input mask: uint8 [T, size, size] (nearest, pad 0)."""
        arr = np.asarray(mask)
        if arr.shape != (self.height, self.width):
            raise ConfigError(
                f"a mask of shape {arr.shape} does not match its image ({self.height}x{self.width})"
            )
        pil = Image.fromarray((arr != 0).astype(np.uint8))
        return np.stack([np.asarray(c) for c in self.crops(pil, fill=0, nearest=True)])

    def stitch(self, maps: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Maps over the tiles' inputs [T, size, size] -> one map over the original image
        [height, width] (float64): each pixel the mean over the tiles covering it (padding never
        counts; a pixel no tile covers, impossible by construction, would be NaN)."""
        arrs = [np.asarray(m, dtype=np.float64) for m in maps]
        if len(arrs) != len(self.tiles):
            raise ConfigError(f"stitch needs one map per tile ({len(self.tiles)}), got {len(arrs)}")
        total = np.zeros((self.height, self.width))
        count = np.zeros((self.height, self.width))
        for t, m in zip(self.tiles, arrs, strict=True):
            if m.shape != (self.size, self.size):
                raise ConfigError(f"a tile map must be {self.size}x{self.size}, got {m.shape}")
            part = t.fit.to_original(m)  # [box h, box w], NaN outside the input window
            ok = np.isfinite(part)
            x0, y0, x1, y1 = t.box
            total[y0:y1, x0:x1] += np.where(ok, part, 0.0)
            count[y0:y1, x0:x1] += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def coverage(self) -> np.ndarray:
        """int [height, width]: how many tiles cover each pixel (>= 1 everywhere)."""
        cov = np.zeros((self.height, self.width), dtype=np.int64)
        for t in self.tiles:
            x0, y0, x1, y1 = t.box
            cov[y0:y1, x0:x1] += 1
        return cov


def _window_clip(t: Tile, box: tuple[float, float, float, float]) -> bool:
    """True when `box` overlaps the tile's window with positive area."""
    x0, y0, x1, y1 = t.box
    return min(box[2], x1) > max(box[0], x0) and min(box[3], y1) > max(box[1], y0)


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis: evenly spread, first at 0, last flush with the edge."""
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - overlap)))
    n = 1 + math.ceil((length - tile) / stride)
    return [round(k * (length - tile) / (n - 1)) for k in range(n)]


def plan_tiles(width: int, height: int, size: int, settings: TileSettings | None = None) -> TilePlan:
    """The `TilePlan` of a `width` x `height` image for a `size` x `size` model input.

    Args:
        settings: tile size in original pixels (None: `size`, native resolution) and overlap.
    """
    s = settings or TileSettings()
    if width < 1 or height < 1 or size < 1:
        raise ConfigError(f"cannot tile a {width}x{height} image into {size} px")
    tile = int(s.size or size)
    if width <= tile and height <= tile:  # one tile: the whole image, as letterbox would fit it
        fit = plan_fit(width, height, size, "letterbox")
        return TilePlan(width, height, size, tile, float(s.overlap), (Tile((0, 0, width, height), fit),))
    scale = size / tile
    tiles = []
    for y in _starts(height, tile, s.overlap):
        for x in _starts(width, tile, s.overlap):
            w, h = min(tile, width - x), min(tile, height - y)
            rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
            # a window shorter than a tile (the image is smaller on that axis) is padded centred
            fit = Fit("tile", size, w, h, rw / w, rh / h, float((size - rw) // 2), float((size - rh) // 2))
            tiles.append(Tile((x, y, x + w, y + h), fit))
    return TilePlan(width, height, size, tile, float(s.overlap), tuple(tiles))
