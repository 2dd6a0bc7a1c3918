"""JPEG tiles decoded on the GPU (torchvision.io.decode_jpeg, batched, nvJPEG) against CPU threads (imagecodecs,
what the slide readers decode with): which is faster, to feed an encoder the readers cannot keep up with.

The tiles are the level-0 tiles (256 px, JPEG Q90) of the synthetic slide bench_extract.write_bench_slide writes;
their compressed bytes are read once into memory, so only decoding is timed. Prints decoded tiles/s (and
megapixels/s) of --threads CPU threads and of the device in batches of --batch, the ratio device / threads in
the same run, and the largest pixel difference between the two decoders. Writes ``$OUT/gpu_decode.json`` when
OUT is set.

GPU:   python bench/gpu_decode.py [--tiles 4096] [--batch 128] [--threads 16]
Smoke: python bench/gpu_decode.py --device cpu --tiles 256 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def tile_bytes(path: Path) -> list[bytes]:
    """The compressed level-0 tiles of a TIFF, as stored (complete JPEG streams: no shared JPEGTables)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        if page.jpegtables is not None:
            raise SystemExit(f"{path}: tiles share JPEGTables; this benchmark decodes complete streams only")
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            tf.filehandle.seek(offset)
            out.append(tf.filehandle.read(count))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiles", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=min(16, len(os.sched_getaffinity(0))))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import imagecodecs
    import torch
    from torchvision.io import decode_jpeg

    from bench_extract import write_bench_slide

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run the smoke mode with --device cpu")
    side = 256 * math.ceil(math.sqrt(args.tiles))
    with tempfile.TemporaryDirectory() as tmp:
        tiles = tile_bytes(write_bench_slide(Path(tmp) / "decode.svs", side))[: args.tiles]
    tensors = [torch.frombuffer(bytearray(t), dtype=torch.uint8) for t in tiles]
    batches = [tensors[i: i + args.batch] for i in range(0, len(tensors), args.batch)]
    pixels = 256 * 256 * len(tiles)

    def threads_once() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(imagecodecs.jpeg8_decode, tiles))
        return len(tiles) / (time.perf_counter() - t0)

    def device_once() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches:
            decode_jpeg(b, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return len(tiles) / (time.perf_counter() - t0)

    decode_jpeg(batches[0], device=dev)  # warm-up (nvJPEG handles, allocator)
    rates = {"threads": [], "device": []}
    for _ in range(args.repeats):  # interleaved: both see the same machine
        rates["threads"].append(threads_once())
        rates["device"].append(device_once())
    cpu_ps, dev_ps = max(rates["threads"]), max(rates["device"])
    on_dev = decode_jpeg(batches[0], device=dev)
    diff = max(int(np.abs(img.permute(1, 2, 0).cpu().numpy().astype(int) - imagecodecs.jpeg8_decode(t).astype(int)).max())
               for img, t in zip(on_dev, tiles))
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "tiles": len(tiles), "tile_px": 256, "batch": args.batch, "threads": args.threads,
        "threads_tiles_per_s": cpu_ps, "device_tiles_per_s": dev_ps, "device_over_threads": dev_ps / cpu_ps,
        "threads_mpix_per_s": cpu_ps * pixels / len(tiles) / 1e6, "device_mpix_per_s": dev_ps * pixels / len(tiles) / 1e6,
        "max_pixel_difference": diff,
    }
    print(f"{len(tiles)} JPEG tiles of 256 px: {args.threads} CPU threads {cpu_ps:.0f} tiles/s, {dev} {dev_ps:.0f} "
          f"tiles/s in batches of {args.batch}; device / threads = {dev_ps / cpu_ps:.2f}; largest pixel difference {diff}")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_decode.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
