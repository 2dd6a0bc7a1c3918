"""Region ids -> label rasters, polygons (level-0 px), ROI geometry and the per-region table."""

from __future__ import annotations

import numpy as np

__all__ = ["label_raster", "region_polygons", "region_geometry", "roi_geometry", "region_extents", "region_table",
           "REGION_COLUMNS"]

REGION_COLUMNS = (
    "id", "subregion", "n_patches", "area_um2", "pi", "alpha", "beta", "centroid_x_level0", "centroid_y_level0", "is_roi",
)


def label_raster(patch_region: np.ndarray, grid: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """[rows, cols] int32 raster at patch-grid resolution: region id per cell, -1 where there is no patch.

    grid: [N, 2] (col, row) grid indices (>= 0); shape defaults to the grid's extent.
    """
    grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    region = np.asarray(patch_region).reshape(-1)
    if len(region) != len(grid):
        raise ValueError(f"patch_region has {len(region)} entries but grid has {len(grid)} rows")
    if len(grid) and grid.min() < 0:
        raise ValueError(f"grid has negative index {int(grid.min())}; shift it to start at 0 (PatchFeatures.grid_indices)")
    if shape is None:
        shape = (int(grid[:, 1].max()) + 1, int(grid[:, 0].max()) + 1) if len(grid) else (0, 0)
    raster = np.full(shape, -1, dtype=np.int32)
    raster[grid[:, 1], grid[:, 0]] = region
    return raster


def region_polygons(patch_region: np.ndarray, coords_level0: np.ndarray, patch_size_level0: int) -> list:
    """One shapely (Multi)Polygon per region id 0..R-1 in level-0 px: the union of its patch squares (holes kept)."""
    import shapely

    region = np.asarray(patch_region, dtype=np.int64).reshape(-1)
    xy = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2)
    s = float(patch_size_level0)
    boxes = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + s, xy[:, 1] + s)
    order = np.argsort(region, kind="stable")
    n_regions = int(region.max()) + 1 if len(region) else 0
    bounds = np.searchsorted(region[order], np.arange(n_regions + 1))
    out = []
    for r in range(n_regions):
        geom = shapely.union_all(boxes[order[bounds[r] : bounds[r + 1]]])
        out.append(shapely.normalize(shapely.simplify(geom, 0.0)))
    return out


def region_geometry(encoding, region_id: int):
    """One region's shapely (Multi)Polygon in level-0 px (the union of its patch squares, holes kept)."""
    if encoding.patch_region is None or encoding.coords is None:
        raise ValueError("this SlideEncoding has no patch regions / coords (e.g. from the authors' model adapter)")
    mine = encoding.patch_region == region_id
    if not mine.any():
        raise ValueError(f"region_id={region_id} has no patches (the encoding has {encoding.n_regions} regions)")
    return region_polygons(np.zeros(int(mine.sum()), dtype=np.int64), encoding.coords[mine], encoding.patch_size_level0)[0]


def roi_geometry(encoding) -> tuple:
    """(polygon, (minx, miny, maxx, maxy)) of the ROI in level-0 px, from a ``SlideEncoding``."""
    if encoding.roi is None or encoding.patch_region is None or encoding.coords is None:
        raise ValueError("this SlideEncoding has no ROI / patch regions / coords (e.g. from the authors' model adapter)")
    poly = region_geometry(encoding, encoding.roi)
    return poly, tuple(float(v) for v in poly.bounds)


def region_extents(encoding) -> dict[str, np.ndarray]:
    """Per region, from its patches (level-0 px): ``n_patches`` [R] int64, ``centroid`` [R, 2] float64 mean patch
    centre (x, y) and ``bbox`` [R, 4] int64 (x0, y0, x1, y1; -1 for a region without patches)."""
    n = encoding.n_regions
    region = np.asarray(encoding.patch_region, dtype=np.int64)
    xy = np.asarray(encoding.coords, dtype=np.int64)
    side = int(encoding.patch_size_level0)
    count = np.bincount(region, minlength=n)
    centre = xy + side / 2
    centroid = np.stack([np.bincount(region, centre[:, i], minlength=n) for i in (0, 1)], 1) / np.maximum(count, 1)[:, None]
    lo = np.full((n, 2), np.iinfo(np.int64).max)
    hi = np.full((n, 2), np.iinfo(np.int64).min)
    np.minimum.at(lo, region, xy)
    np.maximum.at(hi, region, xy + side)
    bbox = np.where(count[:, None] > 0, np.concatenate([lo, hi], 1), -1)
    return {"n_patches": count, "centroid": centroid, "bbox": bbox}


def region_table(encoding, *, patch_side_um: float | None = None) -> list[dict]:
    """One dict per region (keys ``REGION_COLUMNS``); area_um2 is None when the patch side in µm is unknown.

    patch_side_um defaults to ``encoding.patch_side_um`` (patch_px × mpp). Centroids are the mean of the
    region's patch centres, in level-0 px.
    """
    if encoding.patch_region is None or encoding.pi is None:
        raise ValueError("this SlideEncoding has no regions (e.g. from the authors' model adapter)")
    side_um = encoding.patch_side_um if patch_side_um is None else patch_side_um
    extents = region_extents(encoding)
    counts, (cx, cy) = extents["n_patches"], extents["centroid"].T
    return [
        {
            "id": r,
            "subregion": int(encoding.region_subregion[r]),
            "n_patches": int(counts[r]),
            "area_um2": None if side_um is None else float(counts[r] * side_um**2),
            "pi": float(encoding.pi[r]),
            "alpha": float(encoding.alpha[r]),
            "beta": float(encoding.beta[r]),
            "centroid_x_level0": float(cx[r]),
            "centroid_y_level0": float(cy[r]),
            "is_roi": r == encoding.roi,
        }
        for r in range(encoding.n_regions)
    ]
