"""Patch reading: `PatchReader` reads and resizes grid patches (the extraction's threads call it), and
`ProcessPatchReader` runs it in worker processes: each process opens the slide itself and reads and decodes its
patches, so JPEG decoding and resizing run on as many cores as there are workers, whatever the GIL leaves to
threads.

`iter_extract(reader="processes")` uses it. The processes start from a fork server (a clean single-threaded
process that has imported the readers once), never from the caller, whose threads and CUDA context a fork
would copy. A daemonic process cannot have children: in a dask worker, keep the thread reader.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import warnings
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

__all__ = ["READERS", "PatchReader", "ProcessPatchReader", "read_level_for_encoder"]

READERS = ("threads", "processes")


def read_level_for_encoder(slide, grid, read_px: int) -> int:
    """The coarsest pyramid level that still gives >= `read_px` px per patch, never finer than `grid.level`."""
    return max(int(grid.level), slide.get_best_level_for_downsample(grid.patch_size_level0 / read_px))


class PatchReader:
    """Reads grid patches at one level and resizes them to `read_px` square (Pillow, antialiased)."""

    def __init__(self, slide, grid, read_px: int, interpolation: str = "bilinear") -> None:
        level = read_level_for_encoder(slide, grid, int(read_px))
        size = max(1, int(round(grid.patch_size_level0 / slide.level_downsamples[level])))
        self._setup(slide, np.asarray(grid.coords), level, size, int(read_px), interpolation)

    def _setup(self, slide, coords: np.ndarray, level: int, size_at_level: int, read_px: int, interpolation: str) -> None:
        from PIL import Image

        self.slide, self.coords, self.level, self.size_at_level, self.read_px = slide, coords, level, size_at_level, read_px
        self.interpolation = interpolation
        self._filter = {"bicubic": Image.Resampling.BICUBIC}.get(interpolation, Image.Resampling.BILINEAR)

    def recipe(self) -> dict:
        """What another process needs to read the same patches from its own copy of the slide (`from_recipe`)."""
        return {"coords": self.coords, "level": self.level, "size_at_level": self.size_at_level,
                "read_px": self.read_px, "interpolation": self.interpolation}

    @classmethod
    def from_recipe(cls, slide, recipe: dict) -> PatchReader:
        reader = cls.__new__(cls)
        reader._setup(slide, **recipe)
        return reader

    def read(self, index: np.ndarray | range) -> np.ndarray:
        """uint8 [len(index), read_px, read_px, 3] patches of grid rows `index`."""
        from PIL import Image

        out = np.empty((len(index), self.read_px, self.read_px, 3), np.uint8)
        s = self.size_at_level
        for k, i in enumerate(index):
            x, y = self.coords[i]
            region = self.slide.read_region((int(x), int(y)), self.level, (s, s))
            if s != self.read_px:
                region = np.asarray(Image.fromarray(region).resize((self.read_px, self.read_px), self._filter))
            out[k] = region
        return out

_WORKER = {}  # the reader of this worker process (set by _open)


def _open(path: str, level_dimensions: tuple, recipe: dict) -> None:
    """Worker start: open the slide at ``path`` and keep a PatchReader for ``recipe`` (coords, level, sizes)."""
    from care_core.wsi import open_slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown µm/px was reported once, by the caller
        slide = open_slide(path, mpp=recipe.pop("mpp"))
    if tuple(map(tuple, slide.level_dimensions)) != tuple(map(tuple, level_dimensions)):
        raise RuntimeError(f"{path} changed while it was being read (levels {slide.level_dimensions}, were "
                           f"{level_dimensions})")
    _WORKER["reader"] = PatchReader.from_recipe(slide, recipe)


def _read(start: int, stop: int, path: str) -> tuple:
    """Read rows [start, stop) into the file ``path``; the shape goes back through the pipe (a message of a few
    bytes: a process killed while writing it cannot leave half a message that blocks the pool's reader)."""
    patches = _WORKER["reader"].read(range(start, stop))
    patches.tofile(path)
    return patches.shape


class _Patches:
    """The result of one read: ``result()`` is the uint8 patches (read from the worker's file, then removed)."""

    def __init__(self, future: Future, path: str) -> None:
        self._future, self._path = future, path

    def result(self) -> np.ndarray:
        shape = self._future.result()
        try:
            return np.fromfile(self._path, np.uint8).reshape(shape)
        finally:
            os.unlink(self._path)


class ProcessPatchReader:
    """``submit(rows)`` -> an object whose ``result()`` is uint8 [len(rows), px, px, 3], read by ``workers``
    processes of their own. rows: a range of grid rows. ``shutdown`` as `concurrent.futures.Executor.shutdown`;
    it also removes the folder of patch files the workers hand their reads over in (page cache, not the pipe).
    """

    def __init__(self, reader, workers: int) -> None:
        if multiprocessing.current_process().daemon:
            raise ValueError(f"reader='processes' cannot start processes from {multiprocessing.current_process().name}, "
                             "a daemonic process (e.g. a dask worker); use reader='threads' there")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["care_core.features.readers", "care_core.features.extract", "care_core.wsi"])
        slide = reader.slide
        self._dir = tempfile.mkdtemp(prefix="care-read-")
        self._pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_open,
            initargs=(str(slide.path), slide.level_dimensions, {**reader.recipe(), "mpp": slide.mpp}),
        )

    def submit(self, rows: range) -> _Patches:
        path = os.path.join(self._dir, f"{rows.start}-{rows.stop}.u8")
        return _Patches(self._pool.submit(_read, rows.start, rows.stop, path), path)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        shutil.rmtree(self._dir, ignore_errors=True)
