"""Benchmark: one-slide `care extract` in this process against the same slide through a process cluster.

Before, `run_cohort` started a dask LocalCluster (worker processes, each importing the package and building
the encoder) even for a single slide. Now a single slide runs in-process and the cluster is kept for
cohorts and `--scheduler`. On one synthetic sample slide (written here) it times
  * in-process: `run_cohort([slide])` (what `care extract slide.svs` does now),
  * cluster:    the same slide through the cluster path (`_run_tasks`, a 1-worker LocalCluster, as before),
and prints cluster / in-process (the speed-up; > 1 means the in-process path is faster) with the CPU time of
each, user and system, for this process and its children. Each path runs into its own fresh folder.

Run: .venv/bin/python bench/bench_extract_inprocess.py [--width-px 6000] [--repeat 2]   (about 1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from care_core.features import cohort
from care_core.features.cohort import SlideEntry, run_cohort
from care_core.synth import write_sample_slide


def _cpu() -> tuple[float, float]:
    t = os.times()
    return t.user + t.children_user, t.system + t.children_system


def timed(fn) -> tuple[float, float, float]:
    """(wall, user, system) seconds of fn()."""
    (u0, s0), t0 = _cpu(), time.perf_counter()
    fn()
    (u1, s1), t1 = _cpu(), time.perf_counter()
    return t1 - t0, u1 - u0, s1 - s0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width-px", type=int, default=6000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = write_sample_slide(tmp / "sample.svs", width_px=args.width_px, height_px=args.width_px * 3 // 4,
                                   seed=0).slide_path
        cfg = {"encoder": "stain-texture", "weights": None, "device": "cpu", "target_mpp": 0.5, "patch_px": 512,
               "min_tissue": 0.25, "batch_size": 32, "read_threads": 2}
        results = {"in-process": [], "cluster": []}
        for r in range(args.repeat):
            out_a, out_b = tmp / f"a{r}", tmp / f"b{r}"
            out_b.mkdir()
            results["in-process"].append(timed(lambda: run_cohort([slide], out_a, encoder="stain-texture", device="cpu")))
            todo = [(0, SlideEntry(Path(slide)), out_b / "sample.h5", "")]
            results["cluster"].append(timed(lambda: cohort._run_tasks(todo, cfg, None, 1, None, None, {})))
            assert (out_a / "sample.h5").read_bytes() != b"" and (out_b / "sample.h5").is_file()
    best = {k: min(v) for k, v in results.items()}  # fastest wall of the repeats (less noise from other processes)
    for name, (wall, user, sys_) in best.items():
        print(f"{name:11s} wall {wall:6.2f} s   user {user:6.2f} s   system {sys_:6.2f} s")
    print(f"cluster / in-process (wall): {best['cluster'][0] / best['in-process'][0]:.2f}")


if __name__ == "__main__":
    main()
