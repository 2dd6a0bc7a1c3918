"""One CARE training step (forward + backward) on a batch of sub-WSIs: step time, peak memory and padding.

The batch is what Stage I feeds the model: B sub-WSIs of up to 360 patches (blob-shaped grids grown
from a seed cell with random priorities, ragged borders), 768-d random features, default (released)
configuration, all gradients on. Padding is counted as transformer slots (tokens + [CLS] + padding)
per real token, for the sub-region transformer and for ARSA, against the fixed-width layout that pads
every sub-region group to k*k slots (the baseline, computed on the same batch).

    python bench/bench_care_train_step.py [--batch 32] [--patches 360] [--threads 2] [--repeats 3]
    python bench/bench_care_train_step.py --batch 4 --patches 120 --bucket-shapes --compile default

With --bucket-shapes and/or --compile MODE (Stage I's config fields) the same step is timed a second time on a
copy of the model with its transformers bucketed / compiled (after one untimed step that compiles), and the
ratio to the eager step measured in the same run is printed, with the largest difference of the outputs.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import resource
import time

import numpy as np
import torch


def blob_grid(n: int, rng: np.random.Generator) -> np.ndarray:
    """n grid cells grown from (0, 0) by random-priority region growing: one connected, ragged blob."""
    seen, out = {(0, 0)}, []
    heap = [(0.0, 0, 0)]
    while len(out) < n:
        _, c, r = heapq.heappop(heap)
        out.append((c, r))
        for dc, dr in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (c + dc, r + dr)
            if q not in seen:
                seen.add(q)
                heapq.heappush(heap, (rng.random(), *q))
    g = np.array(out, dtype=np.int64)
    return g - g.min(0)


def packed_slots(sizes: torch.Tensor, budget: int, bucketed: bool = False) -> int:
    """Slots the model's size-sorted chunks pad ``sizes`` to (each chunk to its widest group; ``bucketed``: both
    the chunk's groups and its width rounded up to their `bucket_shapes` sizes)."""
    from care_core.model.care import _size_sorted_chunks
    from care_core.train.static_shapes import bucket

    size = bucket if bucketed else int
    return sum(size(len(ids)) * size(int(sizes[ids].max())) for ids in _size_sorted_chunks(sizes, budget))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patches", type=int, default=360)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-shapes", action="store_true", help="also time the step with bucketed chunk shapes")
    ap.add_argument("--compile", default="", help="also time the step with torch.compile (mode, or aot_eager)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from care_core.model.care import CARE

    rng = np.random.default_rng(0)
    grids = [blob_grid(args.patches, rng) for _ in range(args.batch)]
    feats = [torch.from_numpy(rng.standard_normal((args.patches, 768), dtype=np.float32)) for _ in grids]
    model = CARE.from_seed(0).train()

    def timed_steps(model, repeats: int):
        times = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = model(feats, grids)
            loss = out.slide_embedding.square().mean() + out.patch_tokens.square().mean() + out.rsl_loss.mean()
            loss.backward()
            times.append(time.perf_counter() - t0)
        return out, times

    fast = copy.deepcopy(model) if args.bucket_shapes or args.compile else None
    out, times = timed_steps(model, args.repeats)
    n = args.batch * args.patches
    k = model.config.k
    square_sizes = torch.from_numpy(np.concatenate([np.unique(g // k, axis=0, return_counts=True)[1] for g in grids]))
    budget = model.config.chunk_tokens
    print(f"batch {args.batch} sub-WSIs x {args.patches} patches x 768-d, {args.threads} threads")
    print(f"step (forward+backward): best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeats}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print("token slots per real token (padding included, [CLS] excluded):")
    print(f"  sub-regions, every group padded to k*k (baseline): {len(square_sizes) * k * k / n:.3f}")
    print(f"  sub-regions, packed by size:                       {packed_slots(square_sizes, budget) / n:.3f}")
    print(f"  ARSA regions, packed by size:                      {packed_slots(out.region_size, budget) / n:.3f}")
    if args.bucket_shapes:
        print(f"  sub-regions, packed, bucketed shapes:              {packed_slots(square_sizes, budget, True) / n:.3f}")
        print(f"  ARSA regions, packed, bucketed shapes:             {packed_slots(out.region_size, budget, True) / n:.3f}")
    if fast is not None:
        from care_core.train.static_shapes import speed_up

        speed_up(fast, bucket_shapes=args.bucket_shapes, compile_mode=args.compile)
        t0 = time.perf_counter()
        timed_steps(fast, 1)  # compiles every shape of the batch
        first = time.perf_counter() - t0
        fast_out, fast_times = timed_steps(fast, args.repeats)
        diff = float((fast_out.slide_embedding - out.slide_embedding).detach().abs().max())
        print(f"bucket_shapes={args.bucket_shapes} compile={args.compile or 'off'}: first step {first:.2f} s, then best "
              f"{min(fast_times):.2f} s, median {np.median(fast_times):.2f} s; eager/this = "
              f"{np.median(times) / np.median(fast_times):.2f} (medians, same run); max |slide embedding diff| {diff:.2e}")


if __name__ == "__main__":
    main()
