"""GPU benchmark: streaming extraction with a ViT-L/16 at 224 px in bf16 (timm `vit_large_patch16_224`,
random weights) on a synthetic JPEG-tiled slide.

Prints and (when $OUT is set) writes `$OUT/gpu_extract.json` with patches/s of
  * read:     read + decode + resize only (the reader threads),
  * model:    the encoder alone on uint8 patches already in host memory (upload, normalise, forward),
  * pipeline: `extract_features`,
and pipeline / min(read, model) (goal >= 0.85: the GPU is kept busy). With --readers threads processes (the
default) read and pipeline are measured with each reader (`extract_features(reader=...)`), in the same run, and
processes / threads is printed; the keys without a suffix are the thread reader's.

GPU:   python bench/gpu_extract.py                       (defaults: --device cuda --n 4096 --batch 128)
Smoke: python bench/gpu_extract.py --device cpu --n 64   (CPU, depth cut to 2 blocks unless --depth is given)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from care_core.features import extract_features, get_encoder

try:
    from bench_extract import encode_rate, full_grid, read_rate, write_bench_slide
    from bench_extract_readers import process_read_rate
except ImportError:  # run from the repository root
    from bench.bench_extract import encode_rate, full_grid, read_rate, write_bench_slide
    from bench.bench_extract_readers import process_read_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=4096, help="patches per measurement")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=min(16, len(os.sched_getaffinity(0))), help="reader threads")
    ap.add_argument("--depth", type=int, default=None, help="transformer blocks (default: all 24; 2 on CPU)")
    ap.add_argument("--readers", nargs="+", default=["threads", "processes"], choices=["threads", "processes"])
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run the smoke mode with --device cpu --n 64")
    depth = args.depth if args.depth is not None else (2 if args.device == "cpu" else None)
    overrides = {} if depth is None else {"depth": depth}
    if args.device == "cpu" and args.depth is None:
        print("smoke mode: CPU with the ViT-L cut to 2 blocks (pass --depth 24 for the full model)")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    enc = get_encoder("timm:vit_large_patch16_224", random_init=True, device=args.device, **overrides)
    side = 224 * int(np.ceil(np.sqrt(args.n)))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bench_slide(Path(tmp) / "gpu_bench.svs", side)
        from care_core.wsi import open_slide

        with open_slide(path) as slide:
            grid = full_grid(side, 224, args.n)
            read_ps, batches, _ = read_rate(slide, grid, enc, args.workers, args.batch)
            model_ps, _ = encode_rate(enc, batches)
            reads, pipes = {}, {}
            for reader in args.readers:
                reads[reader] = read_ps if reader == "threads" else process_read_rate(slide, grid, enc, args.workers,
                                                                                      args.batch)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                pf = extract_features(slide, grid, enc, batch_size=args.batch, num_workers=args.workers, reader=reader)
                pipes[reader] = pf.n_patches / (time.perf_counter() - t0)
    first = args.readers[0]
    read_ps, pipe_ps = reads[first], pipes[first]
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "arch": "vit_large_patch16_224", "depth": depth or 24, "patches": args.n,
        "precision": enc.spec.precision if args.device.startswith("cuda") else "fp32",
        "batch": args.batch, "reader_threads": args.workers, "read_patches_per_s": read_ps,
        "model_patches_per_s": model_ps, "pipeline_patches_per_s": pipe_ps,
        "pipeline_over_slower_stage": pipe_ps / min(read_ps, model_ps), "torch": torch.__version__,
        "readers": args.readers,
    }
    if "processes" in reads and first != "processes":
        result.update({
            "read_patches_per_s_processes": reads["processes"], "pipeline_patches_per_s_processes": pipes["processes"],
            "pipeline_over_slower_stage_processes": pipes["processes"] / min(reads["processes"], model_ps),
            "read_processes_over_threads": reads["processes"] / read_ps,
            "pipeline_processes_over_threads": pipes["processes"] / pipe_ps,
        })
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_extract.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
