"""Lazy pyramid levels: dask arrays whose chunks are the file's native tiles, plus 2x mean levels.

dask's HighLevelGraph re-collects every key of every layer on each ``compute``; for a 100k x 100k
slide (~40k tiles) the stock ``from_array`` layer builds that set in Python (~30 ms per napari read).
``_TileLayer`` hands dask its dict's keys directly (C speed), so one read costs about a tile decode.
Each task is dask's own ``getter`` over a ``_LevelArray``, so dask fuses a later slice into the read
(``level[a:b]`` decodes the tiles under ``[a:b]`` and copies only those rows out of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import getter
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

__all__ = ["TileReader", "tiled_level", "zarr_reader", "level_token", "add_lazy_levels", "COARSEST_PX"]

TileReader = Callable[[slice, slice], np.ndarray]  # (rows, cols) of one level -> (h, w, 3) uint8
COARSEST_PX = 1024  # lazily add 2x levels until the coarsest level's longest side is at most this


class _TileLayer(MaterializedLayer):
    """A materialised layer whose output keys are its dict's keys (no per-compute Python loop)."""

    def get_output_keys(self) -> Any:
        return self.mapping.keys()


def _span(index: Any, n: int) -> tuple[slice, Any]:
    """(contiguous slice of [0, n) to read, index into what was read) for one basic index."""
    if not isinstance(index, slice):
        i = int(index) + (n if int(index) < 0 else 0)
        return slice(i, i + 1), 0
    picks = range(*index.indices(n))
    if len(picks) == 0:
        return slice(0, 0), slice(None)
    lo, hi = min(picks[0], picks[-1]), max(picks[0], picks[-1]) + 1
    stop = picks[-1] - lo + (1 if picks.step > 0 else -1)
    return slice(lo, hi), slice(picks[0] - lo, None if stop < 0 else stop, picks.step)


class _LevelArray:
    """Array-like (H, W, 3) uint8 view of one level that reads through a TileReader."""

    def __init__(self, read: TileReader, shape_hw: tuple[int, int]) -> None:
        self.read = read
        self.shape = (*shape_hw, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols, channels = key + (slice(None),) * (3 - len(key))
        (row_span, row_pick), (col_span, col_pick) = _span(rows, self.shape[0]), _span(cols, self.shape[1])
        if row_span.stop == row_span.start or col_span.stop == col_span.start:
            block = np.empty((row_span.stop - row_span.start, col_span.stop - col_span.start, 3), np.uint8)
        else:
            block = self.read(row_span, col_span)
        return block[row_pick, col_pick, channels]


def _edges(n: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def tiled_level(read: TileReader, shape_hw: tuple[int, int], tile_hw: tuple[int, int], token: str) -> da.Array:
    """(H, W, 3) uint8 dask array with one task per ``tile_hw`` tile, each calling ``read(rows, cols)``."""
    rows, cols = _edges(shape_hw[0], tile_hw[0]), _edges(shape_hw[1], tile_hw[1])
    name = f"wsi-tiles-{token}"
    source = f"wsi-level-{token}"  # the array-like sits under its own key, as in dask's from_array
    everything = slice(None)
    graph: dict = {(name, i, j, 0): (getter, source, (r, c, everything))
                   for i, r in enumerate(rows) for j, c in enumerate(cols)}
    graph[source] = _LevelArray(read, shape_hw)
    chunks = (tuple(r.stop - r.start for r in rows), tuple(c.stop - c.start for c in cols), (3,))
    hlg = HighLevelGraph({name: _TileLayer(graph)}, {name: set()})
    return da.Array(hlg, name, chunks, meta=np.empty((0, 0, 0), np.uint8))


def zarr_reader(arr: Any, axes: str) -> TileReader:
    """Reader over a zarr level of axes "YXS" (RGB or RGBA) or "CYX" (3 planes)."""
    if axes == "CYX":
        return lambda rows, cols: np.moveaxis(np.asarray(arr[:, rows, cols]), 0, -1)
    return lambda rows, cols: np.asarray(arr[rows, cols, :3])


def level_token(*parts: Any) -> str:
    """A stable dask name part for one level of one opened file."""
    return tokenize(*parts)


def add_lazy_levels(levels: list[da.Array]) -> list[da.Array]:
    """Append 2x2-mean levels below the coarsest until its longest side is <= COARSEST_PX; each
    coarse chunk reads only the 2x2 chunks above it."""
    levels = list(levels)
    while max(levels[-1].shape[:2]) > COARSEST_PX:
        prev = levels[-1]
        merged = prev.rechunk({0: 2 * prev.chunks[0][0], 1: 2 * prev.chunks[1][0], 2: -1})
        coarse = da.coarsen(np.mean, merged, {0: 2, 1: 2}, trim_excess=True)
        levels.append(da.round(coarse).astype(np.uint8))
    return levels
