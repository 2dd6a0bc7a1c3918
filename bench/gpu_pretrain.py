"""Stage I on a GPU: sub-WSIs/s, peak GPU memory and model FLOP utilisation at batch 32 / 64 / 128, bf16.

The released CARE (768-d input, embed_dim 512) with iBOT heads (8192 prototypes each), 2 global + 6 local
views of sub-WSIs of up to 360 patches (blob-shaped grids), views already in memory: this measures the
model step, the ceiling the data path must feed. Each view's CARE geometry is computed ahead, as Stage I's
data workers do (--geometry-in-step computes it in the step, on the training process). FLOPs per step are
counted by torch's FlopCounterMode on the first step; utilisation = achieved FLOP/s over --peak-tflops
(H100 SXM dense bf16: 989).

    python bench/gpu_pretrain.py [--batches 32 64 128] [--steps 10] [--peak-tflops 989]
    python bench/gpu_pretrain.py --bucket-shapes --compile default --warmup 6   # the compiled path
    python bench/gpu_pretrain.py --device cpu --batches 2 --steps 2 --patches 120   # smoke run on a CPU

--bucket-shapes / --compile MODE are Stage I's config fields of the same names (care_core/train/static_shapes.py);
each timed step takes another batch of the pool (other shapes, as in training), after --warmup steps that compile
what they meet. --profile N records N more steps with torch.profiler (the trainer's profile_steps) into
``$OUT/<json name>_profile/`` (trace.json, top.txt, summary.json). Writes ``$OUT/gpu_pretrain.json`` (or
``--json NAME``) when the OUT environment variable is set.

Goal (issue): >= 500 sub-WSIs/s on one H100-class GPU and >= 35 % utilisation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--patches", type=int, default=360)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--chunk-tokens", type=int, default=16384, help="CARE chunk_tokens (larger on a GPU)")
    ap.add_argument("--geometry-in-step", action="store_true",
                    help="compute each view's CARE geometry in the step (Stage I computes it in the data workers)")
    ap.add_argument("--bucket-shapes", action="store_true", help="pad CARE's transformer chunks to a few static shapes")
    ap.add_argument("--compile", default="", help="torch.compile mode of CARE's transformers ('' = eager)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps per batch size, each on another batch")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="record N steps with torch.profiler")
    ap.add_argument("--json", default="gpu_pretrain.json", help="name of the JSON written to $OUT")
    args = ap.parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench_care_train_step import blob_grid
    from care_core.model import CARE
    from care_core.model.subregions import subregion_geometry
    from care_core.train.config import config_from_dict
    from care_core.train.data import ViewConfig, make_views
    from care_core.train.ibot import IBOTObjective
    from care_core.train.profile import StepProfiler
    from care_core.train.static_shapes import speed_up

    dev = torch.device(args.device)
    cfg = config_from_dict("1", {"features": ".", "out_dim": 8192, "patch_out_dim": 8192})
    views_cfg = ViewConfig()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    care = CARE(chunk_tokens=args.chunk_tokens)
    geometry_args = {"k": care.config.k, "anchor": care.config.anchor, "n_candidates": care.config.n_candidates}
    pool = []
    for _ in range(64):
        grid = blob_grid(args.patches, rng)
        views = make_views(rng.standard_normal((len(grid), 768), dtype=np.float32), grid, views_cfg, rng)
        if not args.geometry_in_step:
            views.geometries = [subregion_geometry(g, **geometry_args) for g in views.grids]
        pool.append(views)
    obj = IBOTObjective(care, cfg).to(dev).train()
    speed_up(obj, bucket_shapes=args.bucket_shapes, compile_mode=args.compile)
    params = [p for p in obj.trainable().parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev.type == "cuda")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), views {views_cfg.n_global}+{views_cfg.n_local}, "
          f"<= {args.patches} patches per sub-WSI, geometry {'in the step' if args.geometry_in_step else 'ahead'}, "
          f"bucket_shapes {args.bucket_shapes}, compile {args.compile or 'off'}")
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
              "views": [views_cfg.n_global, views_cfg.n_local], "max_patches": args.patches, "steps": args.steps,
              "geometry": "in_step" if args.geometry_in_step else "precomputed", "peak_tflops": args.peak_tflops,
              "bucket_shapes": args.bucket_shapes, "compile": args.compile, "warmup_steps": args.warmup, "batches": []}
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None

    def step(batch, count=False, prof=None):
        ctx = FlopCounterMode(display=False) if count else None
        if ctx:
            ctx.__enter__()
        phase = prof.phase if prof is not None else (lambda name: contextlib.nullcontext())
        with phase("forward"), torch.autocast(**amp):
            loss, _ = obj(batch, {"teacher_temp": 0.04, "momentum": 0.996})
        with phase("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
        with phase("teacher_ema"):
            obj.update_teacher(0.996)
        if prof is not None:
            prof.step()
        if ctx:
            ctx.__exit__(None, None, None)
            return ctx.get_total_flops()
        return None

    def batch_of(b: int, k: int) -> list:  # batch k: the pool from offset k * b on (k = 0: the first b sub-WSIs)
        return [pool[(k * b + i) % len(pool)] for i in range(b)]

    for b in args.batches:
        batch = batch_of(b, 0)
        for k in range(args.warmup):
            step(batch_of(b, k))
        flops = step(batch, count=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for k in range(args.steps):
            step(batch_of(b, k) if args.warmup else batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        tflops = flops / dt / 1e12
        print(f"batch {b:4d}: {b / dt:8.1f} sub-WSIs/s, {dt * 1000:8.1f} ms/step, peak {peak:6.1f} GiB, "
              f"{flops / b / 1e9:6.1f} GFLOP per sub-WSI, {tflops:7.2f} TFLOP/s = {100 * tflops / args.peak_tflops:5.1f} % of peak")
        result["batches"].append({"batch": b, "sub_wsis_per_s": b / dt, "ms_per_step": dt * 1000,
                                  "peak_gpu_gib": peak if dev.type == "cuda" else None, "gflop_per_sub_wsi": flops / b / 1e9, "tflops": tflops,
                                  "utilisation": tflops / args.peak_tflops})
        if out_dir is not None:
            (out_dir / args.json).write_text(json.dumps(result, indent=2))
    if args.profile:
        b = args.batches[-1]
        prof = StepProfiler(out_dir / f"{Path(args.json).stem}_profile" if out_dir else Path("profile-out"), args.profile,
                            dev.type == "cuda")
        for k in range(args.profile + 2):  # the profiler skips one step and warms up on another
            step(batch_of(b, k) if args.warmup else batch_of(b, 0), prof=prof)
        prof.close()
        print(f"profile of batch {b}: {prof.out / 'top.txt'}")
        print((prof.out / "top.txt").read_text())


if __name__ == "__main__":
    main()
