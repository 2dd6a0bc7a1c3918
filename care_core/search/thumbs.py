"""Thumbnails of search answers: a region's neighbourhood read lazily from its slide at a fitting pyramid level,
with the region's outline drawn over it."""

from __future__ import annotations

import numpy as np

__all__ = ["region_thumbnail", "OUTLINE_RGB"]

OUTLINE_RGB = (255, 214, 0)  # the region's outline on a thumbnail


def region_thumbnail(slide, bbox, patch_xy: np.ndarray | None = None, patch_side: int = 0, *, size: int = 160,
                     margin: float = 0.15) -> np.ndarray:
    """A (size, size, 3) uint8 view of ``bbox`` (x0, y0, x1, y1, level-0 px) of ``slide`` (an open Slide): the
    box squared about its centre and widened by ``margin`` of its side each way, read from the coarsest level
    that still has at least ``size`` px across it (so a whole-slide region costs about as much as a small one).
    With ``patch_xy`` (the region's patch top-left corners, level-0 px, on a grid of step ``patch_side``) the
    region's outline is drawn 2 px wide in OUTLINE_RGB."""
    from skimage.transform import resize

    x0, y0, x1, y1 = (float(v) for v in bbox)
    half = max(x1 - x0, y1 - y0, 1.0) * (0.5 + margin)
    left, top = (x0 + x1) / 2 - half, (y0 + y1) / 2 - half
    per_px = 2 * half / size  # level-0 px per thumbnail px
    level = slide.get_best_level_for_downsample(per_px)
    ds = slide.level_downsamples[level]
    side_px = max(1, int(np.ceil(2 * half / ds)))
    image = slide.read_region((int(np.floor(left)), int(np.floor(top))), level, (side_px, side_px))
    thumb = resize(image, (size, size), order=1, anti_aliasing=side_px > size, preserve_range=True)
    thumb = np.clip(np.round(thumb), 0, 255).astype(np.uint8)
    if patch_xy is not None and len(patch_xy) and patch_side > 0:
        thumb[_outline(_region_mask(patch_xy, patch_side, left, top, per_px, size))] = OUTLINE_RGB
    return thumb


def _region_mask(patch_xy: np.ndarray, side: int, left: float, top: float, per_px: float, size: int) -> np.ndarray:
    """(size, size) bool: thumbnail pixels whose centre falls in one of the region's patches."""
    xy = np.asarray(patch_xy, dtype=np.int64)
    origin = xy.min(axis=0)
    cells = (xy - origin) // side
    grid = np.zeros(tuple(cells.max(axis=0)[::-1] + 1), bool)  # [rows (y), cols (x)]
    grid[cells[:, 1], cells[:, 0]] = True
    centres = (np.arange(size) + 0.5) * per_px
    cx = np.floor((left + centres - origin[0]) / side).astype(np.int64)
    cy = np.floor((top + centres - origin[1]) / side).astype(np.int64)
    in_x = (cx >= 0) & (cx < grid.shape[1])
    in_y = (cy >= 0) & (cy < grid.shape[0])
    mask = np.zeros((size, size), bool)
    mask[np.ix_(in_y, in_x)] = grid[np.ix_(cy[in_y], cx[in_x])]
    return mask


def _outline(mask: np.ndarray) -> np.ndarray:
    """The 2-px inner border of ``mask``."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=2, border_value=0)
