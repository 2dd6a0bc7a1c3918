"""The region map as a pyramidal OME-TIFF label mask aligned with its slide (same level-0 size, µm/px set).

Pixel value = region id + 1 (0 = no patch). Written tile by tile from the patch-grid raster, so a
100k x 80k px slide never needs its level-0 mask in memory; each pyramid level halves the previous one
(nearest sample, labels are never blended).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import InvalidInputError
from care_core.regions.geometry import label_raster

__all__ = ["LabelMask", "write_label_mask", "read_label_mask"]

TILE_PX = 512


@dataclass(frozen=True)
class LabelMask:
    """A label mask read back: ``levels[i]`` is a (h, w) array of level i (value = region id + 1, 0 = none);
    ``mpp`` is the level-0 µm/px the file records (None when it records none)."""

    levels: list[np.ndarray]
    mpp: float | None

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in px."""
        h, w = self.levels[0].shape[:2]
        return int(w), int(h)


def _cell_lookup(encoding) -> tuple[np.ndarray, np.ndarray, int]:
    """(padded raster [rows + 1, cols + 1] whose last row/column is 0, level-0 (x, y) of cell (0, 0), step)."""
    raster = label_raster(encoding.patch_region, encoding.grid) + 1
    padded = np.zeros((raster.shape[0] + 1, raster.shape[1] + 1), raster.dtype)
    padded[:-1, :-1] = raster
    origin = np.asarray(encoding.coords, dtype=np.int64).min(axis=0)
    return padded, origin, int(encoding.patch_size_level0)


def _tiles(lookup, size_level0: tuple[int, int], downsample: int, dtype) -> Iterator[np.ndarray]:
    """Row-major (TILE_PX, TILE_PX) tiles of the mask at ``downsample`` (pixel i samples level-0 px i·d)."""
    padded, origin, step = lookup
    w0, h0 = size_level0
    w, h = -(-w0 // downsample), -(-h0 // downsample)
    n_rows, n_cols = padded.shape[0] - 1, padded.shape[1] - 1

    def cells(start: int, offset: int, n: int, limit: int) -> np.ndarray:
        px = (start + np.arange(TILE_PX)) * downsample
        idx = np.floor_divide(px - offset, step)
        return np.where((px < limit) & (idx >= 0) & (idx < n), idx, n)  # n: the zero row / column

    for ty in range(0, h, TILE_PX):
        rows = cells(ty, origin[1], n_rows, h0)
        for tx in range(0, w, TILE_PX):
            yield padded[rows[:, None], cells(tx, origin[0], n_cols, w0)[None, :]].astype(dtype, copy=False)


def write_label_mask(
    encoding,
    path: str | Path,
    *,
    slide_size_level0: tuple[int, int],
    mpp: float | None,
) -> Path:
    """Write the region labels as a tiled, zlib-compressed pyramidal OME-TIFF of the slide's level-0 size.

    slide_size_level0: (width, height) of the slide in level-0 px. mpp: its µm/px (PhysicalSizeX/Y), or
    None when unknown. Sub-resolutions halve each time until one tile holds the whole level.
    """
    import tifffile

    if encoding.patch_region is None or encoding.coords is None:
        raise InvalidInputError("this SlideEncoding has no patch regions; encode the slide with CARE first")
    w0, h0 = (int(v) for v in slide_size_level0)
    if w0 <= 0 or h0 <= 0:
        raise InvalidInputError(f"slide_size_level0={slide_size_level0!r} must be positive (width, height)")
    n_labels = int(encoding.n_regions) + 1
    dtype = np.uint16 if n_labels <= np.iinfo(np.uint16).max else np.uint32
    lookup = _cell_lookup(encoding)
    downsamples = [1]
    while max(w0, h0) // downsamples[-1] > TILE_PX:
        downsamples.append(downsamples[-1] * 2)
    metadata = {"axes": "YX", "Name": "CARE regions"}
    if mpp is not None:
        metadata.update(PhysicalSizeX=float(mpp), PhysicalSizeXUnit="µm", PhysicalSizeY=float(mpp),
                        PhysicalSizeYUnit="µm")
    options = {"tile": (TILE_PX, TILE_PX), "compression": "zlib", "dtype": dtype}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=w0 * h0 > 2**31, ome=True) as tif:
        tif.write(_tiles(lookup, (w0, h0), 1, dtype), shape=(h0, w0), subifds=len(downsamples) - 1,
                  metadata=metadata, **options)
        for d in downsamples[1:]:
            tif.write(_tiles(lookup, (w0, h0), d, dtype), shape=(-(-h0 // d), -(-w0 // d)), subfiletype=1,
                      **options)
    return Path(path)


def read_label_mask(path: str | Path) -> LabelMask:
    """Read a label mask written by ``write_label_mask`` (every level in memory: for checks and small slides)."""
    import tifffile

    from care_core.wsi._metadata import file_mpp

    with tifffile.TiffFile(path) as tf:
        mpp, _ = file_mpp(tf)
        levels = [level.asarray() for level in tf.series[0].levels]
    return LabelMask(levels=levels, mpp=mpp)
