"""Benchmark: reading + JPEG decoding + resizing patches in worker processes against threads (the baseline).

On a synthetic JPEG-tiled SVS (bench_extract.write_bench_slide, 256-px tiles, 0.5 µm/px), it reads the same
patches with `--workers` threads (`PatchReader.read` in a ThreadPoolExecutor, as the extraction's default reader
does) and with `--workers` processes (`readers.ProcessPatchReader`, `reader="processes"`), and prints patches/s
of each and processes / threads. The processes' start (fork server, opening the slide in each) is timed apart:
it is paid once per slide. `--pipeline` also times `extract_features` end to end with each reader (stain-texture
encoder, which resizes each patch to 512 px). On a busy 2-core machine the ratio says little about a 16-core GPU host, where the threads are
bound by the GIL; scripts/gpu_check.sh runs bench/gpu_extract.py with both readers.

    python bench/bench_extract_readers.py [--patches 1024] [--workers 2] [--batch 32] [--px 224] [--pipeline]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from care_core.features.extract import PatchReader  # noqa: E402
from care_core.features.readers import ProcessPatchReader  # noqa: E402


def process_read_rate(slide, grid, encoder, workers: int, batch: int) -> float:
    """patches/s of read + decode + resize in `workers` processes (`reader="processes"`), start-up excluded (one
    worker has started; the others start on their first task, as in extraction)."""
    pool = ProcessPatchReader(PatchReader(slide, grid, encoder.resize_px, encoder.spec.interpolation), workers)
    try:
        pool.submit(range(0, 1)).result()
        rows = [range(i, min(i + batch, len(grid.coords))) for i in range(0, len(grid.coords), batch)]
        t0 = time.perf_counter()
        for part in [pool.submit(r) for r in rows]:
            part.result()
        return len(grid.coords) / (time.perf_counter() - t0)
    finally:
        pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--px", type=int, default=224, help="patch side read (level 0, no resize)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pipeline", action="store_true", help="also time extract_features with each reader")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", "grid patches are")  # stain-texture is made for 512 px: the cost is what counts
    from bench_extract import full_grid, read_rate, write_bench_slide
    from care_core.features import extract_features, get_encoder
    from care_core.wsi import open_slide

    print(f"cores={len(os.sched_getaffinity(0))} workers={args.workers} batch={args.batch} patches={args.patches} "
          f"px={args.px} load average before={os.getloadavg()[0]:.2f}")
    side = math.ceil(args.px * math.ceil(math.sqrt(args.patches)) / 256) * 256  # whole tiles, >= patches
    with tempfile.TemporaryDirectory() as tmp, open_slide(write_bench_slide(Path(tmp) / "b.svs", side)) as slide:
        grid = full_grid(side, args.px, args.patches)
        at_px = SimpleNamespace(resize_px=args.px, spec=SimpleNamespace(interpolation="bilinear"))  # no resize
        t0 = time.perf_counter()
        pool = ProcessPatchReader(PatchReader(slide, grid, args.px), args.workers)
        pool.submit(range(0, 1)).result()
        start_s = time.perf_counter() - t0
        pool.shutdown()
        rates = {"threads": [], "processes": []}
        for _ in range(args.repeats):  # interleaved, so both see the same load
            rates["threads"].append(read_rate(slide, grid, at_px, args.workers, args.batch)[0])
            rates["processes"].append(process_read_rate(slide, grid, at_px, args.workers, args.batch))
        th, pr = max(rates["threads"]), max(rates["processes"])
        print(f"read + decode, best of {args.repeats}: threads {th:.0f} patches/s, processes {pr:.0f} patches/s; "
              f"processes / threads = {pr / th:.2f} (process start-up {start_s:.2f} s, once per slide)")
        if args.pipeline:
            enc = get_encoder("stain-texture", device="cpu")  # resizes each patch to its 512 px
            out = {}
            for name in ("threads", "processes"):
                t0 = time.perf_counter()
                extract_features(slide, grid, enc, batch_size=args.batch, num_workers=args.workers, reader=name)
                out[name] = args.patches / (time.perf_counter() - t0)
            print(f"extract_features (stain-texture, start-up included): threads {out['threads']:.0f} patches/s, "
                  f"processes {out['processes']:.0f} patches/s; processes / threads = {out['processes'] / out['threads']:.2f}")


if __name__ == "__main__":
    main()
