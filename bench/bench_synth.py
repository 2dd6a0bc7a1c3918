"""Time writing the default synthetic sample slide against a plain tiled-JPEG write of the same size.

The baseline streams flat-colour tiles through the same tifffile writer (JPEG, 256 px tiles), so
the ratio is the cost of rendering tissue over the cost of just encoding and writing the pyramid's
level 0. Run: python bench/bench_synth.py [--width-px 24000 --height-px 18000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from care_core.synth import write_sample_slide


def _plain_write(path: Path, width_px: int, height_px: int, tile_px: int = 256) -> float:
    """Seconds to write a flat-colour tiled JPEG of the given size."""
    n_tiles = -(-width_px // tile_px) * -(-height_px // tile_px)
    tile = np.full((tile_px, tile_px, 3), (200, 140, 170), np.uint8)
    start = time.perf_counter()
    with tifffile.TiffWriter(path) as tif:
        tif.write((tile for _ in range(n_tiles)), shape=(height_px, width_px, 3), dtype=np.uint8,
                  tile=(tile_px, tile_px), compression="jpeg", compressionargs={"level": 85}, photometric="rgb",
                  maxworkers=2, metadata=None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-px", type=int, default=24000)
    parser.add_argument("--height-px", type=int, default=18000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_s = _plain_write(Path(tmp) / "plain.tif", args.width_px, args.height_px)
        start = time.perf_counter()
        slide = write_sample_slide(Path(tmp) / "sample.svs", width_px=args.width_px, height_px=args.height_px)
        synth_s = time.perf_counter() - start
        size_mb = slide.slide_path.stat().st_size / 1e6
    mpx = args.width_px * args.height_px / 1e6
    print(f"slide {args.width_px}x{args.height_px} ({mpx:.0f} Mpx level 0), file {size_mb:.1f} MB")
    print(f"baseline flat tiled JPEG write : {base_s:6.2f} s")
    print(f"write_sample_slide (full SVS)  : {synth_s:6.2f} s  ({mpx / synth_s:.1f} Mpx/s)")
    print(f"ratio synth / baseline         : {synth_s / base_s:6.2f}x")


if __name__ == "__main__":
    main()
