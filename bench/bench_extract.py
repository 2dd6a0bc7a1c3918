"""Benchmark: does streaming extraction overlap reading with encoding?

On a synthetic JPEG-tiled SVS (written here with tifffile), it measures patches/s of
  * read:     read + decode + resize only (the extraction's reader threads),
  * encode:   the encoder only, on uint8 patches already in memory,
  * pipeline: `extract_features` (both at once),
and prints pipeline / baseline where
  * ViT-S/16 at 224 px (timm `vit_small_patch16_224`, random weights): baseline = the slower stage alone
    (goal >= 0.85: the stages overlap);
  * stain-texture (both stages compete for the CPU cores): baseline = cores / (read + encode cost per patch,
    each in CPU-seconds measured with one thread) (goal >= 0.85).
"other processes" is the CPU the rest of the machine used during the pipeline run (from /proc/stat): on a
shared machine a figure near 1 core means the run had one core, not two, and its ratio is not meaningful.

Run: .venv/bin/python bench/bench_extract.py [--patches 256] [--workers 2]   (about 1-2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from care_core.features import extract_features, get_encoder
from care_core.features.extract import PatchReader
from care_core.wsi import PatchGrid, open_slide


def write_bench_slide(path: Path, side_px: int, seed: int = 0) -> Path:
    """Square SVS-like slide at 0.5 µm/px: H&E-coloured noise texture, 256-px JPEG tiles, 3 levels."""
    rng = np.random.default_rng(seed)
    base = 1024
    h = np.clip(rng.gamma(2.0, 0.18, (base, base)), 0, 2).astype(np.float32)
    e = np.clip(0.35 + 0.15 * rng.standard_normal((base, base)), 0, 2).astype(np.float32)
    od = h[..., None] * np.array([0.65, 0.70, 0.29], np.float32) + e[..., None] * np.array([0.07, 0.99, 0.11], np.float32)
    tile = (255 * np.exp(-od)).clip(0, 255).astype(np.uint8)
    reps = -(-side_px // base)
    image = np.tile(tile, (reps, reps, 1))[:side_px, :side_px]
    desc = f"Aperio Image Library v12.0.15 \r\n{side_px}x{side_px} (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5000"
    with tifffile.TiffWriter(path) as tw:
        level = image
        for i in range(3):
            tw.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     description=desc if i == 0 else f"{desc.split('|')[0]} -> {level.shape[1]}x{level.shape[0]}",
                     metadata=None)
            level = np.ascontiguousarray(level[::2, ::2])
    return path


def full_grid(side_px: int, patch_px: int, n: int) -> PatchGrid:
    """The first `n` patches of a grid of `patch_px` px patches at 0.5 µm/px (level-0 = 0.5 µm/px)."""
    ys, xs = np.mgrid[0: side_px - patch_px + 1: patch_px, 0: side_px - patch_px + 1: patch_px]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)[:n]
    return PatchGrid(coords=coords, patch_size_level0=patch_px, patch_px=patch_px, target_mpp=0.5, level=0,
                     tissue_fraction=np.ones(len(coords)))


def read_rate(slide, grid, encoder, workers: int, batch: int) -> tuple[float, list[np.ndarray], float]:
    """(patches/s with `workers` threads, the batches, CPU-seconds per patch) of read + decode + resize."""
    from concurrent.futures import ThreadPoolExecutor

    reader = PatchReader(slide, grid, encoder.resize_px, encoder.spec.interpolation)
    idx = [range(i, min(i + batch, len(grid.coords))) for i in range(0, len(grid.coords), batch)]
    c0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        batches = list(pool.map(reader.read, idx))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(grid.coords) / wall, batches, cpu / len(grid.coords)


def encode_rate(encoder, batches: list[np.ndarray]) -> tuple[float, float]:
    """(patches/s, CPU-seconds per patch) of the encoder alone on batches already in memory."""
    encoder.embed(batches[0][:2])  # warm-up
    n = sum(len(b) for b in batches)
    c0, t0 = time.process_time(), time.perf_counter()
    for b in batches:
        encoder.embed(b)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def machine_cpu_s() -> float:
    """CPU-seconds used by every process on the machine so far (Linux /proc/stat; NaN elsewhere)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def pipeline_rate(slide, grid, encoder, workers: int, batch: int) -> tuple[float, float, float]:
    """(patches/s, cores busy on average, cores used meanwhile by other processes) of `extract_features`."""
    m0, c0, t0 = machine_cpu_s(), time.process_time(), time.perf_counter()
    pf = extract_features(slide, grid, encoder, batch_size=batch, num_workers=workers)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return pf.n_patches / wall, cpu / wall, (machine_cpu_s() - m0 - cpu) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=256, help="patches per measurement")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="reader threads")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0))
    print(f"cores={cores} torch_threads={torch.get_num_threads()} workers={args.workers} batch={args.batch} "
          f"load average before={os.getloadavg()[0]:.2f} (other processes share these cores)")
    with tempfile.TemporaryDirectory() as tmp:
        side = 8192
        path = write_bench_slide(Path(tmp) / "bench.svs", side)
        with open_slide(path) as slide:
            torch.manual_seed(0)
            vit = get_encoder("timm:vit_small_patch16_224", random_init=True, device="cpu")
            grid = full_grid(side, 224, args.patches)
            read_ps, batches, _ = read_rate(slide, grid, vit, args.workers, args.batch)
            enc_ps, _ = encode_rate(vit, batches)
            pipe_ps, busy, other = pipeline_rate(slide, grid, vit, args.workers, args.batch)
            base = min(read_ps, enc_ps)
            print(f"ViT-S/16 224px: read {read_ps:.1f}/s  encode {enc_ps:.1f}/s  pipeline {pipe_ps:.1f}/s "
                  f"({busy:.2f} cores busy, other processes {other:.2f})  pipeline/slower-stage = "
                  f"{pipe_ps / base:.2f} (goal >= 0.85)")

            st = get_encoder("stain-texture", device="cpu")
            grid = full_grid(side, 512, args.patches)
            read_ps1, batches, read_cpu = read_rate(slide, grid, st, 1, args.batch)
            torch.set_num_threads(1)
            enc_ps1, enc_cpu = encode_rate(st, batches)
            torch.set_num_threads(cores)
            pipe_ps, busy, other = pipeline_rate(slide, grid, st, args.workers, args.batch)
            ideal = cores / (read_cpu + enc_cpu)
            print(f"stain-texture 512px: read {read_ps1:.1f}/s ({1e3 * read_cpu:.1f} ms CPU/patch, 1 thread)  "
                  f"encode {enc_ps1:.1f}/s ({1e3 * enc_cpu:.1f} ms CPU/patch)  pipeline {pipe_ps:.1f}/s ({busy:.2f} cores busy, "
                  f"other processes {other:.2f})  "
                  f"ideal {ideal:.1f}/s  pipeline/ideal = {pipe_ps / ideal:.2f} (goal >= 0.85)")
            print(f"  pipeline CPU cost {1e3 * busy / pipe_ps:.1f} ms/patch vs read + encode "
                  f"{1e3 * (read_cpu + enc_cpu):.1f} ms/patch; with {busy:.2f} cores obtained the ideal is "
                  f"{busy / (read_cpu + enc_cpu):.1f}/s (pipeline/that = {pipe_ps * (read_cpu + enc_cpu) / busy:.2f})")


if __name__ == "__main__":
    main()
