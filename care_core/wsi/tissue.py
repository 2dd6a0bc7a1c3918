"""Tissue detection on a low-resolution level: colour thresholds, closing, size filters, polygons."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from care_core.errors import NoTissueError
from care_core.wsi.slide import Slide

__all__ = ["TissueMask", "detect_tissue", "mask_level", "mask_polygons"]

NOMINAL_MPP = 0.5  # µm/px at level 0 assumed for size filters when the slide's mpp is unknown
MASK_PX_UNKNOWN_MPP = 2048  # longest side of the mask when the slide's mpp is unknown


@dataclass(frozen=True)
class TissueMask:
    """Tissue pixels of a low level; ``downsample`` = level-0 px per mask px; area in mm² (None when
    the slide's mpp is unknown); polygons in level-0 px with holes."""

    mask: np.ndarray
    downsample: float
    polygons_level0: list
    area_mm2: float | None


def mask_level(slide: Slide, mask_mpp: float = 8.0) -> int:
    """The level whose µm/px is closest (in log scale) to ``mask_mpp``; by size when mpp is unknown."""
    if slide.mpp is None:
        target_ds = max(slide.dimensions) / MASK_PX_UNKNOWN_MPP
    else:
        target_ds = mask_mpp / slide.mpp
    ds = np.asarray(slide.level_downsamples)
    return int(np.argmin(np.abs(np.log(ds / max(target_ds, 1e-9)))))


def _otsu(values: np.ndarray, floor: float, ceiling: float) -> float:
    """Otsu threshold of ``values`` clipped to [floor, ceiling] (a floor keeps empty glass empty, a
    ceiling keeps an all-tissue field from being split in two)."""
    from skimage.filters import threshold_otsu

    if values.size == 0 or values.min() == values.max():
        return floor
    return float(np.clip(threshold_otsu(values), floor, ceiling))


_EIGHT = np.ones((3, 3), bool)


def _small_components(mask: np.ndarray, max_px: float, structure: np.ndarray | None = None) -> np.ndarray:
    """Pixels of the components of ``mask`` (4-connected unless ``structure``) with <= ``max_px`` pixels."""
    labels, n = ndi.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask)
    small = np.bincount(labels.ravel()) <= max_px
    small[0] = False
    return small[labels]


def _remove_small(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Drop 8-connected components of ``mask`` with at most ``max_px`` pixels."""
    return mask & ~_small_components(mask, max_px, _EIGHT)


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill enclosed background components with at most ``max_px`` pixels."""
    return mask | _small_components(ndi.binary_fill_holes(mask) & ~mask, max_px)


def _disk(radius_px: float) -> np.ndarray:
    """Bool disk structuring element of ``radius_px``."""
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= radius_px**2


def _close(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary closing with a disk of ``radius_px`` via Euclidean distance transforms (O(pixels))."""
    pad = int(np.ceil(radius_px)) + 1
    padded = np.pad(mask, pad)
    dilated = ndi.distance_transform_edt(~padded) <= radius_px
    closed = ndi.distance_transform_edt(dilated) > radius_px
    return closed[pad:-pad, pad:-pad] | mask


def _contour_xy(region: np.ndarray, downsample: float) -> np.ndarray | None:
    """Longest 0.5-level contour of a bool region as level-0 (x, y); pixel edges map to level-0 px edges."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(region, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    rc = max(contours, key=len)
    return np.stack([(rc[:, 1] - 0.5) * downsample, (rc[:, 0] - 0.5) * downsample], axis=1)


def mask_polygons(mask: np.ndarray, downsample: float) -> list:
    """Shapely Polygons (holes kept) of each 8-connected component of ``mask``, in level-0 px."""
    from shapely.geometry import Polygon

    labels, _ = ndi.label(mask, structure=_EIGHT)
    polygons = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        region = labels[box] == index
        outer = _contour_xy(ndi.binary_fill_holes(region), downsample)
        if outer is None or len(outer) < 4:
            continue
        holes = []
        hole_labels, n_holes = ndi.label(ndi.binary_fill_holes(region) & ~region)
        for h in range(1, n_holes + 1):
            ring = _contour_xy(hole_labels == h, downsample)
            if ring is not None and len(ring) >= 4:
                holes.append(ring)
        offset = np.array([box[1].start, box[0].start]) * downsample
        poly = Polygon(outer + offset, [ring + offset for ring in holes])
        polygons.append(poly if poly.is_valid else poly.buffer(0))
    return polygons


def detect_tissue(
    slide: Slide,
    *,
    mask_mpp: float = 8.0,
    min_object_um2: float = 10_000.0,
    min_hole_um2: float = 100_000.0,
    closing_um: float = 16.0,
    saturation_floor: float = 0.05,
    od_floor: float = 0.08,
    faint_saturation: float = 0.012,
) -> TissueMask:
    """Find tissue on the level nearest ``mask_mpp`` µm/px.

    Tissue = saturation above Otsu (>= ``saturation_floor``) or mean optical density above Otsu
    (>= ``od_floor``), grown by hysteresis into faint tissue connected to it (fat, pale stroma: locally
    averaged saturation more than ``faint_saturation`` above the glass's median; 0 turns this off);
    closed with a disk of ``closing_um``; objects <= ``min_object_um2`` dropped,
    holes <= ``min_hole_um2`` filled (defaults: 0.01 mm² and 0.1 mm², so fat vacuoles and small lumina count as tissue). Sizes assume 0.5 µm/px at
    level 0 when the slide's mpp is unknown. Raises NoTissueError when nothing is left.
    """
    level = mask_level(slide, mask_mpp)
    rgb = slide.read_region((0, 0), level, slide.level_dimensions[level])
    downsample = float(slide.level_downsamples[level])
    px_um = (slide.mpp or NOMINAL_MPP) * downsample

    top, bottom = rgb.max(axis=2).astype(np.float32), rgb.min(axis=2).astype(np.float32)
    saturation = (top - bottom) / np.maximum(top, 1.0)  # HSV saturation
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0).mean(axis=2)
    t_sat = _otsu(saturation.ravel(), saturation_floor, 0.25)
    t_od = _otsu(od.ravel(), od_floor, 0.3)
    mask = (saturation > t_sat) | (od > t_od)
    if faint_saturation > 0 and mask.any() and not mask.all():
        from skimage.filters import apply_hysteresis_threshold

        # saturation averaged over ~24 µm of the non-confident pixels only, so no halo spreads from tissue edges
        size = max(3, int(round(24.0 / px_um)) | 1)
        weight = ndi.uniform_filter((~mask).astype(np.float32), size)
        local = ndi.uniform_filter(np.where(mask, 0.0, saturation), size) / np.maximum(weight, 1e-6)
        glass = float(np.median(local[~mask]))
        # hysteresis: faint pixels count only where connected to confident tissue
        faint = apply_hysteresis_threshold(np.where(mask, 1.0, local), glass + faint_saturation, 0.5) & ~mask
        # an opening drops the thin rim of colour that JPEG chroma bleeds into the glass along tissue edges
        mask |= ndi.binary_opening(faint, _disk(max(1.0, 16.0 / px_um)))

    mask = _close(mask, max(1.0, closing_um / px_um))
    mask = _remove_small(mask, min_object_um2 / px_um**2)
    mask = _fill_small_holes(mask, min_hole_um2 / px_um**2)
    if not mask.any():
        raise NoTissueError(
            f"{slide.path}: no tissue found on level {level} (saturation > {t_sat:.3f} or optical density > "
            f"{t_od:.3f}, objects > {min_object_um2:g} µm²); check it is a brightfield scan with tissue, "
            f"or lower min_object_um2 / saturation_floor"
        )
    area_mm2 = None if slide.mpp is None else float(mask.sum()) * (slide.mpp * downsample) ** 2 / 1e6
    return TissueMask(mask=mask, downsample=downsample, polygons_level0=mask_polygons(mask, downsample),
                      area_mm2=area_mm2)
