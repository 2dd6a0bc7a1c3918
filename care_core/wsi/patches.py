"""Patch grid at a physical resolution: level-0 corners of the patches that hold enough tissue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from care_core.errors import InvalidInputError, MissingMppError, NoTissueError
from care_core.wsi.slide import Slide
from care_core.wsi.tissue import TissueMask, detect_tissue

__all__ = ["PatchGrid", "mask_values_at_centres", "patch_grid", "read_level_for_mpp", "tissue_fractions"]


@dataclass(frozen=True)
class PatchGrid:
    """Non-overlapping square patches: level-0 (x, y) corners, side in level-0 px and at ``target_mpp``."""

    coords: np.ndarray
    patch_size_level0: int
    patch_px: int
    target_mpp: float
    level: int
    tissue_fraction: np.ndarray


def read_level_for_mpp(slide: Slide, target_mpp: float) -> int:
    """The coarsest level whose µm/px is at or finer than ``target_mpp`` (level 0 if none is)."""
    if slide.mpp is None:
        raise MissingMppError(f"{slide.path}: pixel size unknown; pass mpp= to open_slide (CLI: --mpp)")
    return slide.get_best_level_for_downsample(target_mpp / slide.mpp)


def mask_values_at_centres(coords_level0: np.ndarray, size_level0: float, mask: np.ndarray,
                           downsample: float) -> np.ndarray:
    """[N] int64: the value of ``mask`` (at 1/``downsample`` of level 0) under each patch's centre; -1 where the
    centre lies outside the mask. The one rule for labelling a patch from a label raster."""
    centres = (np.asarray(coords_level0, np.float64).reshape(-1, 2) + size_level0 / 2.0) / float(downsample)
    col, row = np.floor(centres[:, 0]).astype(np.int64), np.floor(centres[:, 1]).astype(np.int64)
    mask = np.asarray(mask)
    inside = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
    out = np.full(len(centres), -1, np.int64)
    out[inside] = mask[row[inside], col[inside]]
    return out


def tissue_fractions(tissue: TissueMask, coords_level0: np.ndarray, size_level0: int) -> np.ndarray:
    """Fraction of each square patch that is tissue (mask boxes rounded to whole mask px, at least 1 px).

    The part of a patch beyond the mask (a patch over the slide's edge) counts as background.
    """
    mask = tissue.mask
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    ds = tissue.downsample

    def box(start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.round(start / ds).astype(np.int64)
        return lo, np.maximum(np.round((start + size_level0) / ds).astype(np.int64), lo + 1)

    (x0, x1), (y0, y1) = box(coords_level0[:, 0]), box(coords_level0[:, 1])
    area = (x1 - x0) * (y1 - y0)
    x0, x1 = np.clip(x0, 0, mask.shape[1]), np.clip(x1, 0, mask.shape[1])
    y0, y1 = np.clip(y0, 0, mask.shape[0]), np.clip(y1, 0, mask.shape[0])
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return inside / area


def patch_grid(
    slide: Slide,
    tissue: TissueMask | None = None,
    *,
    target_mpp: float = 0.5,
    patch_px: int = 512,
    min_tissue: float = 0.25,
) -> PatchGrid:
    """Patches of ``patch_px`` px at ``target_mpp`` µm/px tiling the whole slide from (0, 0), kept when their
    tissue fraction is >= ``min_tissue``. The last row and column overhang the slide's edge when its size is
    not a whole number of patches (``read_region`` pads them with background), so tissue at the edge is
    patched too. ``tissue`` defaults to ``detect_tissue(slide)``.

    Raises MissingMppError when the slide's pixel size is unknown, NoTissueError when no patch is kept.
    """
    if slide.mpp is None:
        raise MissingMppError(
            f"{slide.path}: the slide records no pixel size, so a {target_mpp} µm/px grid cannot be placed; "
            f"pass the scan's µm/px with mpp= to open_slide (CLI: --mpp)"
        )
    if target_mpp <= 0 or patch_px <= 0:
        raise InvalidInputError(f"target_mpp={target_mpp!r} and patch_px={patch_px!r} must be positive")
    size = int(round(patch_px * target_mpp / slide.mpp))
    w0, h0 = slide.dimensions
    if size < 1 or size > min(w0, h0):
        raise InvalidInputError(
            f"{slide.path}: a {patch_px} px patch at {target_mpp} µm/px is {size} level-0 px, which does not fit "
            f"the {w0}x{h0} px slide; use a smaller patch_px or a finer target_mpp"
        )
    tissue = detect_tissue(slide) if tissue is None else tissue
    ys, xs = np.mgrid[0:h0:size, 0:w0:size]  # the last row / column may overhang the edge: read as background
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    fraction = tissue_fractions(tissue, coords, size)
    keep = fraction >= min_tissue
    if not keep.any():
        raise NoTissueError(
            f"{slide.path}: no {size} px patch has tissue fraction >= {min_tissue} (best {fraction.max():.2f}); "
            f"lower min_tissue or check the tissue mask"
        )
    return PatchGrid(coords=coords[keep], patch_size_level0=size, patch_px=patch_px, target_mpp=float(target_mpp),
                     level=read_level_for_mpp(slide, target_mpp), tissue_fraction=fraction[keep])
