"""Peak memory of visiting every level-0 tile of a 50k x 50k slide through care_core.wsi's ``levels[0]``.

Writes a JPEG-tiled pyramid of repeated pre-encoded tiles (fast), then measures, each in a fresh child
process, the peak RSS of: opening the slide only (baseline), decoding every tile's raw bytes with
imagecodecs, visiting every chunk of ``levels[0]`` one by one, and a threaded ``levels[0].mean()``.
Goal: the chunk-by-chunk visit stays under 1 GB.

Run: .venv/bin/python bench/bench_open_memory.py [--size 50000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tile_path import texture_tiles, write_tiled_pyramid  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _open_only(path: str) -> tuple[float, float, float]:
    from care_core.wsi import open_slide

    start = time.perf_counter()
    with open_slide(path) as slide:
        n = slide.levels[0].npartitions
    return _peak_rss_mb(), time.perf_counter() - start, float(n)


def _raw_decode(path: str) -> tuple[float, float, float]:
    import imagecodecs
    import tifffile

    start = time.perf_counter()
    total = 0.0
    with tifffile.TiffFile(path) as tf:
        page, fh = tf.pages[0], tf.filehandle
        height, width = page.shape[:2]
        tile_h, tile_w = page.tilelength, page.tilewidth
        for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            fh.seek(offset)
            tile = imagecodecs.jpeg_decode(fh.read(count))
            row, col = divmod(index, page.chunked[1])
            h, w = min(tile_h, height - row * tile_h), min(tile_w, width - col * tile_w)
            total += float(tile[:h, :w].sum(dtype="uint64"))
    return _peak_rss_mb(), time.perf_counter() - start, total


def _visit_chunks(path: str) -> tuple[float, float, float]:
    from care_core.wsi import open_slide

    start = time.perf_counter()
    total = 0.0
    with open_slide(path) as slide:
        level0 = slide.levels[0]
        for i in range(level0.numblocks[0]):
            for j in range(level0.numblocks[1]):
                block = level0.blocks[i, j, 0].compute(scheduler="synchronous")
                total += float(block.sum(dtype="uint64"))
    return _peak_rss_mb(), time.perf_counter() - start, total


def _threaded_mean(path: str) -> tuple[float, float, float]:
    from care_core.wsi import open_slide

    start = time.perf_counter()
    with open_slide(path) as slide:
        level0 = slide.levels[0]
        total = float(level0.sum(dtype="uint64").compute(scheduler="threads"))
    return _peak_rss_mb(), time.perf_counter() - start, total


def _in_child(fn, path: Path) -> tuple[float, float, float]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, str(path)).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000, help="side of the slide in px (default 50000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_open_memory_") as tmp:
        start = time.perf_counter()
        path = write_tiled_pyramid(Path(tmp) / "big.tif", args.size, texture_tiles(8))
        level0_gb = args.size**2 * 3 / 1e9
        print(f"wrote {args.size} x {args.size} JPEG pyramid ({path.stat().st_size / 1e6:.0f} MB on disk, "
              f"{level0_gb:.1f} GB decoded at level 0) in {time.perf_counter() - start:.1f} s")
        base_mb, open_s, n_chunks = _in_child(_open_only, path)
        print(f"  baseline: import + open_slide            peak RSS {base_mb:7.0f} MB  ({open_s:.2f} s, "
              f"{int(n_chunks)} chunks)")
        raw_mb, raw_s, raw_sum = _in_child(_raw_decode, path)
        print(f"  raw bytes + imagecodecs.jpeg_decode      peak RSS {raw_mb:7.0f} MB  ({raw_s:.1f} s)")
        visit_mb, visit_s, visit_sum = _in_child(_visit_chunks, path)
        print(f"  levels[0] chunk by chunk (sync)          peak RSS {visit_mb:7.0f} MB  ({visit_s:.1f} s)  "
              f"goal < 1000 MB: {'met' if visit_mb < 1000 else 'MISSED'}")
        mean_mb, mean_s, mean_sum = _in_child(_threaded_mean, path)
        print(f"  levels[0].sum() threaded dask            peak RSS {mean_mb:7.0f} MB  ({mean_s:.1f} s)")
        print(f"  ratios: visit/baseline {visit_mb / base_mb:.2f}, visit/raw {visit_mb / raw_mb:.2f}, "
              f"visit time/raw time {visit_s / raw_s:.2f};  pixel sums equal: "
              f"{raw_sum == visit_sum == mean_sum}")


if __name__ == "__main__":
    main()
