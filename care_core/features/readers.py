"""Patch reading in worker processes: each process opens the slide itself and reads and decodes its patches,
so JPEG decoding and resizing run on as many cores as there are workers, whatever the GIL leaves to threads.

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

__all__ = ["READERS", "ProcessPatchReader"]

READERS = ("threads", "processes")

_WORKER = {}  # the reader of this worker process (set by _open)


def _open(path: str, level_dimensions: tuple, recipe: dict) -> None:
    """Worker start: open the slide at ``path`` and keep a PatchReader for ``recipe`` (coords, level, sizes)."""
    from care_core.features.extract import PatchReader
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
