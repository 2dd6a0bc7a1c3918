"""Tile read path: care_core.wsi's dask/zarr ``levels[0]`` vs tiffslide.read_region vs raw JPEG decoding.

Writes a ~20k x 20k JPEG-tiled pyramid once (a few JPEG tiles whose bytes are repeated, so writing
costs no encoding), reads the same random native-aligned 512 x 512 level-0 tiles three ways, and
prints MPix/s and the ratio of our time to tiffslide's (goal <= 1.3). Then writes a 100k x 100k
pyramid of one constant tile, times open_slide + handing napari its list of dask arrays (goal < 1 s), and
the cost of one napari-style read (one ``compute`` per 512 x 512 tile) there against ``Slide.read_region``:
the dask overhead per read must not grow with the number of tiles.

Run: .venv/bin/python bench/bench_tile_path.py [--tiles 300] [--size 20480]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from scipy import ndimage as ndi

from care_core.wsi import open_slide

_CM_PER_UM = 1e-4


def texture_tiles(n: int, tile_px: int = 512, seed: int = 0, quality: int = 85) -> list[bytes]:
    """``n`` different JPEG-encoded smooth-noise RGB tiles (decode cost like real tissue)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        field = ndi.gaussian_filter(rng.random((tile_px, tile_px, 3)).astype(np.float32), (3, 3, 0))
        field = (field - field.min()) / (field.max() - field.min())
        tiles.append(imagecodecs.jpeg_encode((40 + 200 * field).astype(np.uint8), level=quality))
    return tiles


def constant_tile(tile_px: int = 512, value: int = 230) -> list[bytes]:
    """One JPEG-encoded constant tile (a few KB): for huge files that must be cheap to write."""
    return [imagecodecs.jpeg_encode(np.full((tile_px, tile_px, 3), value, np.uint8), level=85)]


def write_tiled_pyramid(path: Path, size_px: int, tiles: list[bytes], *, tile_px: int = 512, mpp: float = 0.25,
                        coarsest_px: int = 1024) -> Path:
    """Square ``size_px`` JPEG-tiled BigTIFF with 2x SubIFD levels down to ``coarsest_px``; tile bytes are
    taken in turn from ``tiles`` and written as they are."""
    sizes = [size_px]
    while sizes[-1] > coarsest_px:
        sizes.append(sizes[-1] // 2)
    kw = {"tile": (tile_px, tile_px), "compression": "jpeg", "photometric": "rgb", "dtype": np.uint8,
          "metadata": None, "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, side in enumerate(sizes):
            n_tiles = (-(-side // tile_px)) ** 2
            px_per_cm = 1 / (mpp * 2**i * _CM_PER_UM)
            extra = {"subifds": len(sizes) - 1} if i == 0 else {"subfiletype": 1}
            tw.write(islice(cycle(tiles), n_tiles), shape=(side, side, 3), resolution=(px_per_cm, px_per_cm),
                     **extra, **kw)
    return path


def _report(label: str, seconds: float, n_tiles: int, tile_px: int) -> float:
    mpix = n_tiles * tile_px * tile_px / 1e6
    print(f"  {label:<54s} {seconds:7.3f} s  {mpix / seconds:7.1f} MPix/s  {1e3 * seconds / n_tiles:6.2f} ms/tile")
    return seconds


def _best_of(repeats: int, run) -> float:
    """Smallest wall time of ``repeats`` runs (the machine is shared: the minimum is the least disturbed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_tiles(folder: Path, size_px: int, n_tiles: int, repeats: int, tile_px: int = 512) -> None:
    start = time.perf_counter()
    path = write_tiled_pyramid(folder / "tiles.tif", size_px, texture_tiles(8, tile_px), tile_px=tile_px)
    print(f"wrote {size_px} x {size_px} JPEG pyramid ({path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.1f} s")
    per_side = size_px // tile_px
    rng = np.random.default_rng(0)
    picks = rng.choice(per_side * per_side, n_tiles, replace=False)
    tiles = [(int(i % per_side) * tile_px, int(i // per_side) * tile_px) for i in picks]

    import dask
    import tiffslide

    ts = tiffslide.TiffSlide(path)
    tf = tifffile.TiffFile(path)
    page = tf.pages[0]
    fh = tf.filehandle

    def raw(x: int, y: int) -> np.ndarray:
        index = (y // tile_px) * page.chunked[1] + x // tile_px
        fh.seek(page.dataoffsets[index])
        return imagecodecs.jpeg_decode(fh.read(page.databytecounts[index]))

    slide = open_slide(path)
    level0 = slide.levels[0]
    views = [level0[y : y + tile_px, x : x + tile_px] for x, y in tiles]
    for x, y in tiles:  # warm the page cache so every path reads from memory
        raw(x, y)

    def each(fn):
        return lambda: [fn(x, y) for x, y in tiles]

    print(f"{n_tiles} random {tile_px} x {tile_px} level-0 tiles (aligned to the file's tiles), best of {repeats}:")
    n = len(tiles)
    t_raw = _report("(c) raw bytes + imagecodecs.jpeg_decode", _best_of(repeats, each(raw)), n, tile_px)
    t_ts = _report("(b) tiffslide.TiffSlide.read_region", _best_of(repeats, each(
        lambda x, y: ts.read_region((x, y), 0, (tile_px, tile_px), as_array=True))), n, tile_px)
    t_batch = _report("(a) levels[0] tiles, one dask.compute (sync scheduler)", _best_of(
        repeats, lambda: dask.compute(*views, scheduler="synchronous")), n, tile_px)
    t_each = _report("(a1) levels[0][tile].compute() per tile (sync)", _best_of(repeats, lambda: [
        v.compute(scheduler="synchronous") for v in views]), n, tile_px)
    t_threads = _report("(a3) levels[0] tiles, one dask.compute (threads)", _best_of(
        repeats, lambda: dask.compute(*views, scheduler="threads")), n, tile_px)
    t_region = _report("(a2) Slide.read_region (no dask)", _best_of(repeats, each(
        lambda x, y: slide.read_region((x, y), 0, (tile_px, tile_px)))), n, tile_px)
    print(f"  ratio (a)/(b) time: {t_batch / t_ts:.2f} (goal <= 1.3);  (a1)/(b): {t_each / t_ts:.2f} "
          f"(+{1e3 * (t_each - t_batch) / n:.2f} ms dask overhead per single-tile compute);  "
          f"(a2)/(b): {t_region / t_ts:.2f};  (a3)/(b): {t_threads / t_ts:.2f};  (b)/(c): {t_ts / t_raw:.2f};  "
          f"(a)/(c): {t_batch / t_raw:.2f}")
    same = all(np.array_equal(v.compute(), raw(x, y)) for v, (x, y) in zip(views[:10], tiles[:10]))
    print(f"  pixels of (a) and (c) identical: {same}")
    slide.close()
    ts.close()
    tf.close()


def bench_open(folder: Path, size_px: int) -> None:
    start = time.perf_counter()
    path = write_tiled_pyramid(folder / "huge.tif", size_px, constant_tile())
    print(f"wrote {size_px} x {size_px} constant-tile pyramid ({path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    slide = open_slide(path)
    layer_data = slide.levels
    t_open = time.perf_counter() - start
    print(f"  open_slide + levels ({len(layer_data)} dask arrays, level 0 {layer_data[0].shape}, "
          f"{layer_data[0].npartitions} chunks): {t_open:.3f} s  (goal < 1 s)")
    rng = np.random.default_rng(1)
    corners = rng.integers(0, size_px // 512 - 1, (200, 2)) * 512
    t_dask = _best_of(3, lambda: [layer_data[0][y : y + 512, x : x + 512].compute(scheduler="synchronous")
                                  for x, y in corners])
    t_plain = _best_of(3, lambda: [slide.read_region((int(x), int(y)), 0, (512, 512)) for x, y in corners])
    n = len(corners)
    print(f"  one compute per 512 x 512 tile (sync): {1e3 * t_dask / n:.2f} ms/tile vs Slide.read_region "
          f"{1e3 * t_plain / n:.2f} ms/tile (+{1e3 * (t_dask - t_plain) / n:.2f} ms dask overhead per read)")
    try:
        from napari.layers import Image
    except ImportError:
        print("  napari not importable: layer construction not timed")
    else:
        start = time.perf_counter()
        Image(layer_data, multiscale=True, rgb=True, contrast_limits=(0, 255))
        t_layer = time.perf_counter() - start
        print(f"  napari.layers.Image(levels, multiscale=True): {t_layer:.3f} s; "
              f"open + layer {t_open + t_layer:.3f} s  (goal < 1 s)")
    slide.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=300, help="random level-0 tiles to read (default 300)")
    parser.add_argument("--size", type=int, default=20480, help="side of the tile-path slide in px (default 20480)")
    parser.add_argument("--huge", type=int, default=100_000, help="side of the open-time slide in px (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the best is shown (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_tile_path_") as tmp:
        bench_tiles(Path(tmp), args.size, args.tiles, args.repeats)
        bench_open(Path(tmp), args.huge)


if __name__ == "__main__":
    main()
