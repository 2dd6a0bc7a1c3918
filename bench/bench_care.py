"""CARE forward on CPU: time and peak memory against slide size, and adaptive vs fixed regions.

Each measurement runs in a fresh subprocess (peak RSS is per process); times are process CPU
time (robust on a shared machine) and wall time. Inputs are 768-d random
features on tissue-shaped grids (the N highest cells of a smoothed random field: blobs with holes
and ragged borders), default (released) configuration, inference mode.

    python bench/bench_care.py [--sizes 10000 50000 100000] [--threads 1]

Targets: time(100k) / time(10k) <= 12, peak RSS increase at 100k <= 2 GB, adaptive / fixed <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

WORKER = r"""
import json, resource, sys, time
import numpy as np, psutil, torch
from scipy import ndimage
from care_core.model.care import CARE
n, fixed, threads = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
torch.set_num_threads(threads)
rng = np.random.default_rng(0)
side = int(np.ceil(np.sqrt(n / 0.45)))
field = ndimage.gaussian_filter(rng.standard_normal((side, side)), sigma=side / 12)
rows, cols = np.unravel_index(np.argsort(field, axis=None)[::-1][:n], field.shape)
grid = np.stack([cols, rows], 1).astype(np.int64)
x = torch.from_numpy(rng.standard_normal((n, 768), dtype=np.float32))
model = CARE.from_seed(0, fixed_regions=fixed).eval()
with torch.inference_mode():  # warm-up on a small slide (allocator, kernels)
    model([x[:2000]], [grid[:2000]], return_patch_tokens=False)
rss0 = psutil.Process().memory_info().rss
t0, c0 = time.perf_counter(), time.process_time()
with torch.inference_mode():
    out = model([x], [grid], return_patch_tokens=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n": n, "fixed": fixed, "cpu_seconds": cpu, "wall_seconds": wall, "peak_increase_mb": (peak - rss0) / 2**20,
                  "regions": int(len(out.pi)), "subregions": int(out.region_subregion.max()) + 1}))
"""


def run(n: int, fixed: bool, threads: int) -> dict:
    res = subprocess.run([sys.executable, "-c", WORKER, str(n), "1" if fixed else "0", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is not inflated by spinning)")
    args = ap.parse_args()
    results = [run(n, False, args.threads) for n in args.sizes]
    for r in results:
        print(f"adaptive  N={r['n']:>7}  CPU {r['cpu_seconds']:7.2f} s  wall {r['wall_seconds']:7.2f} s  "
              f"peak RSS +{r['peak_increase_mb']:6.0f} MB  {r['regions']} regions")
    base, last = results[0], results[-1]
    ratio = last["cpu_seconds"] / base["cpu_seconds"]
    print(f"CPU time({last['n']}) / CPU time({base['n']}) = {ratio:.2f}  (size ratio {last['n'] / base['n']:.0f}; target <= 12 for 10x)")
    print(f"peak RSS increase at N={last['n']}: {last['peak_increase_mb']:.0f} MB (target <= 2048)")
    fixed = run(args.sizes[0], True, args.threads)
    print(f"fixed     N={fixed['n']:>7}  CPU {fixed['cpu_seconds']:7.2f} s  wall {fixed['wall_seconds']:7.2f} s  "
          f"peak RSS +{fixed['peak_increase_mb']:6.0f} MB")
    print(f"adaptive / fixed CPU time at N={fixed['n']}: {base['cpu_seconds'] / fixed['cpu_seconds']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
