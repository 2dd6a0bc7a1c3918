"""The cost of durable writes: `care encode` of N small feature files with the fsyncs of `_atomic` (each temp
file before its rename, each folder after) against the same encode with them switched off, in one run.

Each slide writes its five outputs as one atomic set, so N slides are 5 N fsynced files and N folder fsyncs.
The two variants alternate (with, without, with, without) on fresh output folders on the same disk, and the
ratio of the medians is printed. Inputs: tiny grids (40 patches, 8-d) and a tiny CARE, so that the writes, not
the model, dominate: this is the worst case for the fsync share.

    python bench/bench_fsync.py [--n 1000] [--dir FOLDER] [--rounds 2]

FOLDER (default: the current folder) picks the disk measured: the outputs go to a temp folder inside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="feature files to encode (default 1000)")
    parser.add_argument("--dir", type=Path, default=Path("."), help="folder on the disk to measure (default .)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant (default 2)")
    args = parser.parse_args()

    import numpy as np
    import torch

    import care_core._atomic as atomic
    from care_core.encode import encode_paths
    from care_core.features import PatchFeatures
    from care_core.model import CARE

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_fsync_", dir=args.dir))
    rng = np.random.default_rng(0)
    for i in range(args.n):
        grid = np.stack(np.unravel_index(rng.choice(100, 40, replace=False), (10, 10)), 1)
        PatchFeatures(features=rng.standard_normal((40, 8)).astype(np.float32), coords=grid * 256, patch_size_level0=256,
                      mpp=0.5, patch_px=256, encoder="stain-texture").save(work / "features" / f"s{i:05d}.h5")
    torch.manual_seed(0)
    care = CARE({"input_dim": 8, "embed_dim": 16, "heads": 2, "spf_dim": 8, "k": 4, "subregion_depth": 1,
                 "arsa_depth": 1, "mlp_ratio": 2.0}).eval()
    real_fsync = atomic._fsync
    times: dict[str, list[float]] = {"fsync": [], "no fsync": []}
    for r in range(args.rounds):
        for name in times:
            atomic._fsync = real_fsync if name == "fsync" else (lambda path: None)
            t0 = time.perf_counter()
            written = encode_paths(work / "features", care, work / f"out_{name.replace(' ', '_')}_{r}")
            times[name].append(time.perf_counter() - t0)
            assert len(written) == 5 * args.n
    atomic._fsync = real_fsync
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"{name:9s} {args.n} files ({5 * args.n} outputs): " + ", ".join(f"{t:.2f} s" for t in values)
              + f"; median {med[name]:.2f} s, {1000 * med[name] / args.n:.2f} ms per slide")
    print(f"fsync / no fsync: {med['fsync'] / med['no fsync']:.2f}x ({work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
