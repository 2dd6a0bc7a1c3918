"""Host memory of Stage I data with a 10,000-sub-WSI index against a 1,000-sub-WSI one (goal: flat).

Writes a synthetic cohort of feature files through the feature store (each slide: `--per-slide` separate
18 x 18 blocks of patches, one sub-WSI each), builds a sub-WSI index over the first tenth of the slides
and one over all of them, then measures, each in a fresh child process, the peak RSS of: importing the
Stage I data modules (baseline), and loading an index and reading every sub-WSI through SubWSIDataset
and make_views (the whole epoch a DataLoader worker would see). Prints both peaks and their ratio.

Run: .venv/bin/python bench/bench_subwsi_memory.py [--slides 1000] [--per-slide 10] [--dim 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak across exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def _baseline(_: str) -> tuple[float, float, int]:
    import care_core.train.data  # noqa: F401
    import care_core.train.subwsi  # noqa: F401

    return _peak_rss_mb(), 0.0, 0


def _epoch(index_path: str) -> tuple[float, float, int]:
    from care_core.train.data import SubWSIDataset, ViewConfig, make_views, sample_rng
    from care_core.train.subwsi import SubWSIIndex

    start = time.process_time()
    ds = SubWSIDataset(SubWSIIndex.load(index_path), seed=0)
    cfg, n = ViewConfig(), 0
    for i in range(len(ds)):
        features, grid = ds[i]
        views = make_views(features, grid, cfg, sample_rng(0, 0, i))
        n += sum(len(r) for r in views.rows)
    return _peak_rss_mb(), time.process_time() - start, len(ds)


def _measure(fn, arg: str) -> tuple[float, float, int]:
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per measurement
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, arg).result()


def write_cohort(folder: Path, n_slides: int, per_slide: int, dim: int) -> list[Path]:
    """`n_slides` feature files, each `per_slide` 18 x 18 blocks 4 cells apart in a row (324 patches each)."""
    from care_core.features import PatchFeatures

    ys, xs = np.mgrid[0:18, 0:18]
    one = np.stack([xs.ravel(), ys.ravel()], axis=1)
    grid = np.concatenate([one + [22 * b, 0] for b in range(per_slide)])
    rng = np.random.default_rng(0)
    paths = []
    for s in range(n_slides):
        feats = rng.normal(size=(len(grid), dim)).astype(np.float32)
        pf = PatchFeatures(features=feats, coords=256 * grid, patch_size_level0=256, encoder="bench")
        paths.append(pf.save(folder / f"slide_{s:05d}.h5"))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=1000, help="slides in the large cohort (the small one has a tenth)")
    ap.add_argument("--per-slide", type=int, default=10, help="sub-WSIs per slide")
    ap.add_argument("--dim", type=int, default=16, help="feature dim (memory of one item, not of the index)")
    args = ap.parse_args()

    from care_core.train.subwsi import build_subwsi_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = write_cohort(tmp, args.slides, args.per_slide, args.dim)
        print(f"cohort: {len(paths)} feature files in {time.perf_counter() - start:.1f} s")
        small_n = max(1, args.slides // 10)
        results = {}
        for name, files in (("small", paths[:small_n]), ("large", paths)):
            start = time.perf_counter()
            index = build_subwsi_index(files, tmp / f"{name}.h5")
            build_s = time.perf_counter() - start
            rss, epoch_s, n = _measure(_epoch, str(index.path))
            results[name] = rss
            print(f"{name}: {len(files)} slides, {n} sub-WSIs; index built in {build_s:.1f} s "
                  f"({(tmp / f'{name}.h5').stat().st_size / 1e6:.2f} MB); epoch read + views {1e3 * epoch_s / n:.1f} ms CPU per sub-WSI; "
                  f"peak RSS {rss:.1f} MB")
        base, _, _ = _measure(_baseline, "")
        print(f"baseline (imports only): peak RSS {base:.1f} MB")
        print(f"peak RSS large / small: {results['large'] / results['small']:.3f} (goal: ~1, flat)")
        print(f"above baseline: small {results['small'] - base:.1f} MB, large {results['large'] - base:.1f} MB")


if __name__ == "__main__":
    main()
