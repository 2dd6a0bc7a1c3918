"""Streaming patch-feature extraction: threads (or processes) read and resize patches while the encoder runs.

Reading and encoding are two thread pools. A CPU encoder that allows it (`cpu_parallel_embed`) runs in
its own `num_workers` threads rather than in the readers, so the cores stay busy encoding while readers
wait on file I/O and decoding (both release the GIL).

Memory is bounded by the batches in flight (`num_workers + prefetch_batches` batches of uint8 patches)
plus the [N, D] float32 result, whatever the slide size.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from care_core.features.readers import READERS, PatchReader, ProcessPatchReader, read_level_for_encoder
from care_core.features.registry import PatchEncoder, get_encoder
from care_core.features.store import PatchFeatures

__all__ = ["ExtractProgress", "iter_extract", "extract_features", "read_level_for_encoder", "PatchReader"]


@dataclass(frozen=True)
class ExtractProgress:
    """Patches encoded so far, of `total`, and the mean rate since the start (patches/s)."""

    done: int
    total: int
    patches_per_s: float


def _check_resolution(grid, encoder: PatchEncoder) -> None:
    fov_grid_um, fov_enc_um = grid.patch_px * grid.target_mpp, encoder.patch_px * encoder.mpp
    if abs(grid.target_mpp - encoder.mpp) > 0.1 * encoder.mpp or abs(fov_grid_um - fov_enc_um) > 0.1 * fov_enc_um:
        warnings.warn(
            f"grid patches are {grid.patch_px} px at {grid.target_mpp:g} µm/px ({fov_grid_um:g} µm) but encoder "
            f"{encoder.name!r} expects {encoder.patch_px} px at {encoder.mpp:g} µm/px ({fov_enc_um:g} µm); "
            "features may be off-distribution",
            stacklevel=3,
        )


def iter_extract(
    slide,
    grid,
    encoder: PatchEncoder | str,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | None = None,
    prefetch_batches: int = 2,
    reader: str = "threads",
) -> Generator[ExtractProgress, None, PatchFeatures]:
    """Encode every patch of `grid`, yielding an `ExtractProgress` after each batch; returns `PatchFeatures`.

    encoder: a `PatchEncoder` or a registered name (built on `device`, default "auto"). Patches are read at
    the coarsest level that serves (never finer than `grid.level`) and resized to the encoder's input by
    `num_workers` threads, at most `num_workers + prefetch_batches` batches ahead of the encoder. Encoders
    that allow it (`cpu_parallel_embed`, e.g. stain-texture) encode in `num_workers` threads of their own.
    reader: "threads" (the default) or "processes": `num_workers` processes, each with the slide open, read and
    decode (`readers.ProcessPatchReader`; not inside a daemonic process such as a dask worker). On CUDA a batch is
    gathered in pinned host memory, so the encoder's upload is an asynchronous copy.
    """
    if isinstance(encoder, str):
        encoder = get_encoder(encoder, device=device or "auto")
    elif device is not None and device != "auto" and device != encoder.device:
        raise ValueError(f"device={device!r} but encoder {encoder.name!r} is on {encoder.device!r}; build it there")
    if batch_size < 1 or num_workers < 1:
        raise ValueError(f"batch_size={batch_size} and num_workers={num_workers} must be >= 1")

    if reader not in READERS:
        raise ValueError(f"reader={reader!r} is not one of {READERS}")
    _check_resolution(grid, encoder)
    patches = PatchReader(slide, grid, encoder.resize_px, encoder.spec.interpolation)
    total = len(patches.coords)
    features = np.empty((total, encoder.dim), np.float32)
    in_worker = encoder.cpu_parallel_embed and encoder.device == "cpu"
    if reader == "processes":
        read_pool = ProcessPatchReader(patches, num_workers)
        read = read_pool.submit
    else:
        read_pool = ThreadPoolExecutor(num_workers, thread_name_prefix="care-read")

        def read(rows: range) -> Future:
            return read_pool.submit(patches.read, rows)
    embed_pool = ThreadPoolExecutor(num_workers, thread_name_prefix="care-embed") if in_worker else None
    staging = None if in_worker else _pinned_batch(encoder, batch_size, patches.read_px)

    def submit(idx: range) -> list[Future]:
        """The batch's patches (or features, when encoded in `embed_pool`) in `num_workers` parts, one per
        worker: the first batch and the last one keep every worker busy."""
        step = -(-len(idx) // num_workers)
        parts = [read(idx[i: i + step]) for i in range(0, len(idx), step)]
        if embed_pool is None:
            return parts
        return [embed_pool.submit(lambda read: encoder.embed(read.result()), read) for read in parts]

    batches = iter(range(i, min(i + batch_size, total)) for i in range(0, total, batch_size))
    t0, done = time.perf_counter(), 0
    pending: deque = deque()
    try:
        for idx in batches:
            pending.append((idx, submit(idx)))
            if len(pending) >= num_workers + prefetch_batches:
                break
        while pending:
            idx, parts = pending.popleft()
            out = np.concatenate([part.result() for part in parts], out=None if staging is None else staging[: len(idx)])
            nxt = next(batches, None)
            if nxt is not None:
                pending.append((nxt, submit(nxt)))
            features[idx.start: idx.stop] = out if in_worker else encoder.embed(out)
            done += len(idx)
            yield ExtractProgress(done, total, done / max(time.perf_counter() - t0, 1e-9))
    except BrokenProcessPool:  # seen by a read's result or by the next submit
        raise RuntimeError(f"{slide.path}: a reader process ended abruptly (killed, or out of memory); run again, or "
                           "read with reader='threads'") from None
    finally:
        if embed_pool is not None:
            embed_pool.shutdown(wait=False, cancel_futures=True)  # queued encodes go first
        read_pool.shutdown(wait=True, cancel_futures=True)
        if embed_pool is not None:
            embed_pool.shutdown(wait=True)  # a running encode ends with its read (at once if the read was dropped)
    return PatchFeatures(
        features=features,
        coords=patches.coords,
        patch_size_level0=grid.patch_size_level0,
        mpp=float(grid.target_mpp),
        patch_px=int(grid.patch_px),
        encoder=encoder.name,
        weights_sha256=encoder.weights_sha256,
        slide_path=str(slide.path),
        slide_size_level0=tuple(int(v) for v in slide.dimensions),
        extra={"read_level": patches.level, "input_px": encoder.input_px, "resize_px": encoder.resize_px},
    )


def _pinned_batch(encoder: PatchEncoder, batch_size: int, px: int) -> np.ndarray | None:
    """A uint8 [batch_size, px, px, 3] batch in page-locked host memory when the encoder runs on CUDA (its upload
    is then an asynchronous copy, and no pinned copy is made per batch), else None. One buffer serves every batch:
    `embed` returns host features, so the upload is over before the next batch is gathered into it."""
    if not str(encoder.device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.empty((batch_size, px, px, 3), dtype=torch.uint8).pin_memory().numpy()


def extract_features(
    slide,
    grid,
    encoder: PatchEncoder | str,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | None = None,
    prefetch_batches: int = 2,
    progress: Callable[[ExtractProgress], None] | None = None,
    reader: str = "threads",
) -> PatchFeatures:
    """`iter_extract` run to the end (calling `progress(event)` after each batch); returns `PatchFeatures`."""
    gen = iter_extract(slide, grid, encoder, batch_size=batch_size, num_workers=num_workers, device=device,
                       prefetch_batches=prefetch_batches, reader=reader)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)
