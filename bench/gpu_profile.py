"""Stage I through the trainer on a GPU, profiled: where a step's time goes, with data loading, host syncs, the
optimiser and the teacher EMA in it (bench/gpu_pretrain.py times the model step alone).

Writes a cohort of random 768-d feature grids (ragged blobs of --patches cells, float16 .h5), then runs
``care_core.train.train`` on it: the released CARE, 8192-prototype heads, chunk_tokens 16384, batch --batch,
--workers DataLoader workers, ``profile_steps`` = --profile. Prints the profile's table (top host and device items
per step) and writes ``$OUT/gpu_profile.json`` (the profile summary, samples/s of the last logged step) and
``$OUT/gpu_profile/`` (trace.json, top.txt, summary.json) when OUT is set.

GPU:   python bench/gpu_profile.py [--batch 64] [--profile 5] [--sync-every 10] [--bucket-shapes] [--compile MODE]
Smoke: python bench/gpu_profile.py --device cpu --slides 4 --patches 300 --batch 2 --profile 1 --small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_cohort(folder: Path, slides: int, patches: int, dim: int, seed: int = 0) -> None:
    from bench_care_train_step import blob_grid
    from care_core.features import PatchFeatures

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for s in range(slides):
        grid = blob_grid(patches, rng)
        feats = rng.standard_normal((len(grid), dim), dtype=np.float32).astype(np.float16)
        PatchFeatures(features=feats, coords=grid * 512, patch_size_level0=512, mpp=0.5, patch_px=512,
                      encoder="bench-random").save(folder / f"slide{s:04d}.h5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--slides", type=int, default=24)
    ap.add_argument("--patches", type=int, default=3000, help="patches per slide (about 8 sub-WSIs of <= 360)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))), help="DataLoader workers")
    ap.add_argument("--profile", type=int, default=5, help="steps recorded (after one skipped and one warm-up step)")
    ap.add_argument("--sync-every", type=int, default=10)
    ap.add_argument("--bucket-shapes", action="store_true")
    ap.add_argument("--compile", default="")
    ap.add_argument("--small", action="store_true", help="a tiny model and heads (the CPU smoke run)")
    args = ap.parse_args()
    import torch

    from care_core.train.config import config_from_dict
    from care_core.train.trainer import train

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_cohort(Path(tmp) / "features", args.slides, args.patches, 64 if args.small else 768)
        print(f"cohort of {args.slides} slides x {args.patches} patches written in {time.perf_counter() - t0:.1f} s")
        steps = args.profile + 4
        model = {"chunk_tokens": 16384} if not args.small else {"embed_dim": 64, "heads": 4, "spf_dim": 32}
        heads = {"out_dim": 8192, "patch_out_dim": 8192} if not args.small else {"out_dim": 256, "patch_out_dim": 256,
                                                                                 "head_hidden": 128}
        cfg = {"features": str(Path(tmp) / "features"), "batch_size": args.batch, "epochs": 100, "warmup_epochs": 0,
               "num_workers": args.workers, "device": args.device, "log_every": args.sync_every,
               "sync_every": args.sync_every, "checkpoint_every": 10_000, "profile_steps": args.profile,
               "bucket_shapes": args.bucket_shapes, "compile": args.compile, "model": model, **heads}
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        events = []
        for ev in train(config_from_dict("1", cfg), run):  # epochs over the cohort's sub-WSIs, cut after `steps`
            events.append(ev)
            if ev.kind == "step" and ev.step >= steps:
                break
        wall = time.perf_counter() - t0
        summary = json.loads((run / "profile" / "summary.json").read_text())
        print((run / "profile" / "top.txt").read_text())
        last = [e for e in events if e.kind == "step"][-1]
        result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                  "torch": torch.__version__, "batch": args.batch, "workers": args.workers, "steps": last.step,
                  "sync_every": args.sync_every, "bucket_shapes": args.bucket_shapes, "compile": args.compile,
                  "samples_per_s_last_logged": last.samples_per_s, "wall_s": wall, "profile": summary}
        print(f"{last.step} steps, {last.samples_per_s:.1f} sub-WSIs/s at the last logged step, "
              f"{np.mean(summary['wall_ms_per_step']):.1f} ms per profiled step")
        if out_dir is not None:
            (out_dir / "gpu_profile.json").write_text(json.dumps(result, indent=2))
            shutil.copytree(run / "profile", out_dir / "gpu_profile", dirs_exist_ok=True)


if __name__ == "__main__":
    main()
