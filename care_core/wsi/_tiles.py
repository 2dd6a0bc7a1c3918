"""Lazy pyramid levels: dask arrays whose chunks are the file's native tiles, plus 2x mean levels.

napari reads a level by slicing it (one ``compute`` per slice), so the cost of one read must not grow
with the slide. Stock dask layers make every ``compute`` collect all keys of the level into a Python
``set`` (several times) before culling: ~5 ms per read on a 100k x 100k slide (~40k tiles).

* ``_TileLayer`` stores only the tile grid and builds a tile's task when asked: opening a slide creates
  no tasks, and its ``cull`` turns the requested keys straight into their tasks (O(keys asked)), so a
  one-tile read is a 3-task graph (slice, tile, array-like) whatever the slide size. Its full key set
  exists only when a graph with legacy layers (e.g. ``level.blocks``) asks for it, built once in C.
* Each task is dask's own ``getter`` over a ``_LevelArray`` stored under the level's source key (as in
  dask's ``from_array``), so dask fuses a later slice into the read (``level[a:b]`` decodes the tiles
  under ``[a:b]`` and copies only those rows out of them).
* ``tiff_tile_reader`` decodes the native tiles under a request straight from the file with tifffile's
  decoder (bytes read under the file handle's lock, decoding in the caller's thread), skipping zarr's
  per-call event-loop round trip (~0.2 ms of a ~0.9 ms 512 x 512 JPEG tile) and its single I/O thread;
  missing tiles and other layouts go through zarr.

What remains per read is dask's fixed per-``compute`` cost (~0.3-0.8 ms, partly the copy dask makes of a
one-chunk result), the same at 20k and 100k px: see ``bench/bench_tile_path.py``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from itertools import product
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.task_spec import Task, TaskRef
from dask.array.core import getter
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer

__all__ = ["TileReader", "tiled_level", "zarr_reader", "tiff_tile_reader", "level_token", "add_lazy_levels",
           "COARSEST_PX"]

TileReader = Callable[[slice, slice], np.ndarray]  # (rows, cols) of one level -> (h, w, 3) uint8
COARSEST_PX = 1024  # lazily add 2x levels until the coarsest level's longest side is at most this
OVERVIEW_PX = 4096  # lazy levels up to this longest side are computed once (together) and kept in memory


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


class _TileLayer(Layer):
    """Graph layer of one level: key (name, i, j, 0) reads tile row i, column j; ``source`` holds the
    array-like. Tasks are built on demand; ``cull`` never walks the whole grid."""

    # HLG.cull collects every key of the graph for layers with legacy tasks; this layer's cull finds
    # its dependencies itself (every tile needs only ``source``), so it does not need them.
    has_legacy_tasks = False

    def __init__(self, name: str, source: str, array: _LevelArray, tile_hw: tuple[int, int]) -> None:
        super().__init__()
        self.name, self.source, self.array, self.tile_hw = name, source, array, tile_hw
        self.grid = (-(-array.shape[0] // tile_hw[0]), -(-array.shape[1] // tile_hw[1]))

    def _is_tile(self, key: Any) -> bool:
        return (type(key) is tuple and len(key) == 4 and key[0] == self.name and key[3] == 0
                and 0 <= key[1] < self.grid[0] and 0 <= key[2] < self.grid[1])

    def __contains__(self, key: object) -> bool:
        return key == self.source or self._is_tile(key)

    def __getitem__(self, key: Any) -> Any:
        if key == self.source:
            return self.array
        if not self._is_tile(key):
            raise KeyError(key)
        (th, tw), (_, i, j, _) = self.tile_hw, key
        index = (slice(i * th, min(i * th + th, self.array.shape[0])),
                 slice(j * tw, min(j * tw + tw, self.array.shape[1])), slice(None))
        return Task(key, getter, TaskRef(self.source), index)

    def __iter__(self) -> Iterator:
        return iter(self._keys)

    def __len__(self) -> int:
        return 1 + self.grid[0] * self.grid[1]

    def is_materialized(self) -> bool:
        return False

    def get_output_keys(self) -> frozenset:
        return self._keys

    @cached_property
    def _keys(self) -> frozenset:
        """Every key, built once at C speed: only graphs holding legacy layers (e.g. ``level.blocks``)
        ask, and dask asks several times per compute."""
        return frozenset(product((self.name,), range(self.grid[0]), range(self.grid[1]), (0,))) | {self.source}

    def cull(self, keys: set, all_hlg_keys: Any) -> tuple[Layer, Mapping[Any, set]]:
        """Only the requested tiles (and the source when any is requested): O(len(keys))."""
        tiles = [k for k in keys if self._is_tile(k)]
        out = {k: self[k] for k in tiles}
        deps = {k: {self.source} for k in tiles}
        if tiles or self.source in keys:
            out[self.source], deps[self.source] = self.array, set()  # last: HLG.cull discards it
        return MaterializedLayer(out, annotations=self.annotations), deps


def tiled_level(read: TileReader, shape_hw: tuple[int, int], tile_hw: tuple[int, int], token: str) -> da.Array:
    """(H, W, 3) uint8 dask array with one task per ``tile_hw`` tile, each calling ``read(rows, cols)``."""
    name = f"wsi-tiles-{token}"
    layer = _TileLayer(name, f"wsi-level-{token}", _LevelArray(read, shape_hw), tile_hw)
    chunks = tuple(tuple(min(t, n - k) for k in range(0, n, t)) for n, t in zip(shape_hw, tile_hw)) + ((3,),)
    hlg = HighLevelGraph({name: layer}, {name: set()})
    return da.Array(hlg, name, chunks, meta=np.empty((0, 0, 0), np.uint8))


def zarr_reader(arr: Any, axes: str) -> TileReader:
    """Reader over a zarr level of axes "YXS" (RGB or RGBA) or "CYX" (3 planes)."""
    if axes == "CYX":
        return lambda rows, cols: np.moveaxis(np.asarray(arr[:, rows, cols]), 0, -1)
    return lambda rows, cols: np.asarray(arr[rows, cols, :3])


def tiff_tile_reader(level: Any, fallback: TileReader) -> TileReader:
    """Reader over one tifffile pyramid level (a ``TiffPageSeries`` level) that decodes the native tiles
    under a request straight from the file with tifffile's own decoder and pastes them together: no zarr
    call, whose event-loop round trip costs ~0.2 ms of a ~0.9 ms 512 x 512 JPEG tile and serialises the
    decoding of every thread on one I/O thread. Bytes are read under the file handle's lock, switched on
    here (tifffile's handle has none by default); decoding runs outside it, so threads decode in parallel.
    Requests over missing tiles and layouts it does not cover (stripped, planar, multi-page, NDPI) go to
    ``fallback``."""
    page = level.keyframe
    if not (len(level.pages) == 1 and page.is_tiled and page.planarconfig == 1 and page.imagedepth == 1
            and page.jpegheader is None and tuple(level.shape) == tuple(page.shape) and len(page.shape) == 3):
        return fallback
    fh, (th, tw) = page.parent.filehandle, (page.tilelength, page.tilewidth)
    fh.set_lock(True)  # a real RLock, kept if already set (the zarr store shares the same one)
    per_row = -(-page.imagewidth // tw)
    tables = {} if page.jpegtables is None else {"jpegtables": page.jpegtables}

    def tile(index: int) -> np.ndarray:
        with fh.lock:  # also the lock tifffile's zarr store reads under: seek + read stay together
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        return page.decode(data, index, _fullsize=True, **tables)[0][0]  # (th, tw, samples)

    def read(rows: slice, cols: slice) -> np.ndarray:
        tiles = [(i, j, i * per_row + j) for i in range(rows.start // th, (rows.stop - 1) // th + 1)
                 for j in range(cols.start // tw, (cols.stop - 1) // tw + 1)]
        if not all(page.databytecounts[index] for *_, index in tiles):
            return fallback(rows, cols)
        if len(tiles) == 1:
            i, j, index = tiles[0]
            return tile(index)[rows.start - i * th : rows.stop - i * th, cols.start - j * tw : cols.stop - j * tw, :3]
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, 3), np.uint8)
        for i, j, index in tiles:
            y0, y1 = max(rows.start, i * th), min(rows.stop, (i + 1) * th)
            x0, x1 = max(cols.start, j * tw), min(cols.stop, (j + 1) * tw)
            out[y0 - rows.start : y1 - rows.start, x0 - cols.start : x1 - cols.start] = (
                tile(index)[y0 - i * th : y1 - i * th, x0 - j * tw : x1 - j * tw, :3])
        return out

    return read


def level_token(*parts: Any) -> str:
    """A stable dask name part for one level of one opened file."""
    return tokenize(*parts)


def _block_mean(block: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Mean over ``axis`` of a uint8 block, accumulated in float32 (half the memory of float64)."""
    return block.mean(axis=axis, dtype=np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.uint8)


def add_lazy_levels(levels: list[da.Array]) -> list[da.Array]:
    """Append 2x, 4x, 8x, ... block-mean levels below the coarsest native level until the longest side is
    <= COARSEST_PX.

    Each large lazy level reduces the native level directly (not the lazy level above it), so a view
    decodes each native tile under it once; chunks are re-merged to the native tile size so napari reads a
    few large chunks. The small ones (<= OVERVIEW_PX: thumbnail, tissue mask, napari zoomed out) are
    computed together on their first read, in one pass over the file, and kept in memory.
    """
    base = levels[-1]
    tile_h, tile_w = base.chunks[0][0], base.chunks[1][0]
    out = list(levels)
    factors = []
    factor = 2
    while max(base.shape[0] // (factor // 2), base.shape[1] // (factor // 2)) > COARSEST_PX:
        factors.append(factor)
        factor *= 2

    def reduced(f: int) -> da.Array:  # float32 block mean of the native level by f
        # coarsen needs chunks that are multiples of the factor: merge native tiles when the factor is larger
        src = base.rechunk({0: max(tile_h, f), 1: max(tile_w, f), 2: -1})
        if any(c % f for c in src.chunks[0][:-1] + src.chunks[1][:-1]):
            src = base.rechunk({0: tile_h * f, 1: tile_w * f, 2: -1})
        return da.coarsen(_block_mean, src, {0: f, 1: f}, trim_excess=True)

    small = [f for f in factors if max(base.shape[0] // f, base.shape[1] // f) <= OVERVIEW_PX]
    for f in factors[: len(factors) - len(small)]:
        out.append(reduced(f).map_blocks(_to_uint8, dtype=np.uint8).rechunk({0: tile_h, 1: tile_w, 2: -1}))
    if small:
        shared = _Overviews(reduced(small[0]), [f // small[0] for f in small])
        for n, f in enumerate(small):
            shape = (base.shape[0] // f, base.shape[1] // f, 3)
            name = f"overview-{f}-{base.name}"
            out.append(da.from_array(_OverviewLevel(shared, n, shape), chunks=(tile_h, tile_w, 3), name=name,
                                     meta=np.empty((0, 0, 0), np.uint8)))
    return out


class _Overviews:
    """The small lazy levels: one dask pass gives the finest (float32 block means of the native level); the
    coarser ones are block means of it (exact: means of equal blocks); computed on the first read, then kept."""

    def __init__(self, finest: da.Array, factors: list[int]) -> None:
        self._finest, self._factors = finest, factors
        self._lock = threading.Lock()
        self._data: list[np.ndarray] | None = None

    def get(self, index: int) -> np.ndarray:
        with self._lock:
            if self._data is None:
                finest = self._finest.compute()
                h, w = finest.shape[:2]
                self._data = [
                    _to_uint8(finest[: h - h % f, : w - w % f].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)))
                    for f in self._factors
                ]
                self._finest = None
        return self._data[index]


class _OverviewLevel:
    """Array-like view of one level of `_Overviews`."""

    def __init__(self, shared: _Overviews, index: int, shape: tuple[int, int, int]) -> None:
        self._shared, self._index = shared, index
        self.shape, self.dtype, self.ndim = shape, np.dtype(np.uint8), 3

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._shared.get(self._index)[key]
