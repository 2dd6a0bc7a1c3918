"""Region search: exact query latency and index memory, and same-compartment precision@10 on held-out slides.

1. Latency / memory: a region index of N synthetic regions (random normal embeddings of width E, in shards of
   1000 regions, written in the format ``care index`` writes) loaded with ``RegionIndex``; the median time of
   one top-10 query (``RegionIndex.search``, BLAS on one thread, 50 queries) and the index's bytes in memory
   against the embeddings' own float32 size. Targets (issue 20): exact search over 100k regions <= 50 ms on one
   core; index memory <= 1.2x the embeddings (plus metadata).
2. Precision@10: the held-out synthetic cohort (``build/demo-train/heldout``: features/, truth/<slide>.csv with
   x, y, compartment) encoded with the shipped demo CARE; each region labelled by the majority ground-truth
   compartment of its patches (regions whose majority is background, -1, are left out); for every labelled
   region the share of its 10 nearest (cosine, itself left out) with its label, averaged. Representations:
   the mean ARSA output token of each CARE region (what an index searches by default), CARE's region
   embedding g^AR, the mean patch feature of the same CARE region, and fixed 8x8-patch squares' mean patch
   feature. Target: CARE's region representation at least the mean patch feature's.

   3. Approximate (faiss-cpu installed): at 1M 128-d regions (1000 Gaussian blobs, and standard normal), the
   IVF-Flat index's median query time and recall@10 against exact for nprobe 8..512, and its memory (it holds
   the only copy of the embeddings). Target: <= 50 ms on one core at recall@10 >= 0.95; memory <= 1.2x.

    python bench/bench_search.py [--sizes 10000 100000] [--dims 128 512] [--approx-sizes 1000000]
                                 [--heldout build/demo-train/heldout]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

TARGET_MS = 50.0
TARGET_MEMORY = 1.2


def synthetic_index(folder: Path, n: int, dim: int, seed: int = 0, per_slide: int = 1000, clusters: int = 0) -> Path:
    """An index folder of ``n`` random regions in ``n / per_slide`` shards (the format ``care index`` writes):
    standard normal embeddings, or with ``clusters`` a mixture of that many unit-variance blobs whose centres have sd 1 per axis."""
    from care_core.search.index import FORMAT, INDEX_JSON

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(clusters, 1), dim), dtype=np.float32) * (1.0 if clusters else 0.0)
    slides = {}
    for s in range(0, n, per_slide):
        r = min(per_slide, n - s)
        name = f"slide{s // per_slide:05d}"
        xy = rng.integers(0, 50_000, (r, 2))
        emb = centres[rng.integers(0, len(centres), r)] + rng.standard_normal((r, dim), dtype=np.float32)
        np.savez(folder / f"{name}.npz", region_embeddings=emb,
                 slide_embedding=rng.standard_normal(dim, dtype=np.float32), centroid=xy + 256.0,
                 bbox=np.concatenate([xy, xy + 512], 1), n_patches=np.ones(r, np.int64), predicted=np.full(r, "", str))
        slides[name] = {"shard": f"{name}.npz", "source": "", "source_sha256": "", "n_regions": r}
    info = {"format": FORMAT, "model_sha256": "", "encoder": "", "embed_dim": dim, "slides": slides}
    (folder / INDEX_JSON).write_text(json.dumps(info))
    return folder


def latency(n: int, dim: int, queries: int = 50) -> dict:
    from care_core.search import RegionIndex

    with tempfile.TemporaryDirectory() as tmp:
        index = RegionIndex(synthetic_index(Path(tmp), n, dim))
    rng = np.random.default_rng(1)
    times = []
    with threadpool_limits(1):
        for row in rng.integers(0, n, queries):
            t0 = time.perf_counter()
            index.search(index.regions[row], k=10)
            times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    own = n * dim * 4
    return {"n": n, "dim": dim, "ms": ms, "matrix_x": index.regions.nbytes / own, "total_x": index.nbytes / own,
            "mb": index.nbytes / 2**20}


def approximate(n: int, dim: int, clusters: int, nprobes=(8, 32, 128, 512), queries: int = 200) -> list[dict]:
    """Per nprobe: median top-10 query ms (one thread) and recall@10 of the IVF index against exact, over
    ``queries`` stored rows; with the build time (first load: k-means and adding), the load time of the saved
    index, and the memory of the index loaded with it (faiss lists + metadata, no exact matrix)."""
    import faiss

    from care_core.search import RegionIndex, top_k

    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_index(Path(tmp), n, dim, clusters=clusters)
        exact = RegionIndex(folder, approximate=False)
        t0 = time.perf_counter()
        RegionIndex(folder, approximate=True)  # builds and saves
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = RegionIndex(folder, approximate=True)  # loads the saved one
        load_s = time.perf_counter() - t0
    ann = index.approximate()
    rows = np.random.default_rng(2).integers(0, n, queries)
    with threadpool_limits(1):
        t0 = time.perf_counter()
        truth = [set(top_k(exact.regions, exact.regions[r], 10)[0]) for r in rows]
        exact_ms = 1000 * (time.perf_counter() - t0) / queries
        out = []
        for nprobe in nprobes:
            ann.ivf.nprobe = nprobe
            times, hits = [], 0
            for r, want in zip(rows, truth):
                t0 = time.perf_counter()
                got = ann.top_k(exact.regions[r], 10)[0]
                times.append(time.perf_counter() - t0)
                hits += len(want & set(got))
            out.append({"n": n, "dim": dim, "clusters": clusters, "nlist": ann.nlist, "nprobe": nprobe,
                        "ms": 1000 * float(np.median(times)), "recall": hits / (10 * queries), "exact_ms": exact_ms,
                        "build_s": build_s, "load_s": load_s, "x": index.nbytes / (n * dim * 4),
                        "ivf_x": ann.nbytes / (n * dim * 4)})
    return out


def precision_at_10(vectors: np.ndarray, labels: np.ndarray, slide: np.ndarray, other_slides: bool = False) -> float:
    """Mean share of the 10 cosine-nearest (itself left out; with other_slides, its slide too) with the same label."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    if other_slides:
        sims[slide[:, None] == slide[None, :]] = -np.inf
    top = np.argpartition(-sims, 9, axis=1)[:, :10]
    return float((labels[top] == labels[:, None]).mean())


def chance(labels: np.ndarray) -> float:
    """Precision@10 of neighbours drawn at random: the sum of each label's squared share."""
    return float(((np.unique(labels, return_counts=True)[1] / len(labels)) ** 2).sum())


def _majority(labels: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """[n] the most frequent label of each group (-1 background counts too; empty groups: -1)."""
    out = np.full(n, -1)
    for g in range(n):
        values, counts = np.unique(labels[groups == g], return_counts=True)
        if len(values):
            out[g] = values[np.argmax(counts)]
    return out


def heldout_rows(folder: Path) -> dict[str, list]:
    """Per representation: (vectors, labels, slide ids) rows of every held-out slide, encoded with the demo CARE."""
    import pandas as pd

    from care_core.features import load_features
    from care_core.model import load_checkpoint
    from care_core.model.checkpoint import DEMO_CHECKPOINT

    care = load_checkpoint(DEMO_CHECKPOINT)
    rows: dict[str, list] = {"CARE region, mean ARSA token (index default)": [], "CARE region embedding g^AR": [],
                             "CARE region, mean patch feature": [], "8x8 square, mean patch feature": []}
    for s, path in enumerate(sorted((folder / "features").glob("*.h5"))):
        pf = load_features(path)
        truth = pd.read_csv(folder / "truth" / f"{path.stem}.csv")
        compartment = dict(zip(zip(truth.x, truth.y), truth.compartment))
        label = np.array([compartment.get((int(x), int(y)), -1) for x, y in pf.coords])
        feats = np.asarray(pf.features, dtype=np.float32)
        enc = care.encode(pf)
        n = len(enc.region_embeddings)
        mean = np.stack([feats[enc.patch_region == r].mean(0) for r in range(n)])
        square = pf.grid_indices() // 8
        sq_id = np.unique(square, axis=0, return_inverse=True)[1].reshape(-1)
        m = int(sq_id.max()) + 1
        sq_mean = np.stack([feats[sq_id == q].mean(0) for q in range(m)])
        for name, vec, lab in (("CARE region, mean ARSA token (index default)", enc.region_token_means,
                                _majority(label, enc.patch_region, n)),
                               ("CARE region embedding g^AR", enc.region_embeddings, _majority(label, enc.patch_region, n)),
                               ("CARE region, mean patch feature", mean, _majority(label, enc.patch_region, n)),
                               ("8x8 square, mean patch feature", sq_mean, _majority(label, sq_id, m))):
            keep = lab >= 0
            rows[name].append((vec[keep], lab[keep], np.full(keep.sum(), s)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--approx-sizes", type=int, nargs="*", default=[1_000_000],
                    help="index sizes for the approximate (faiss) index; none to skip")
    ap.add_argument("--heldout", type=Path, default=Path("build/demo-train/heldout"))
    args = ap.parse_args()
    print("| regions | dim | query ms (1 core, top-10) | / 50 ms target | matrix / embeddings | index / embeddings | MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for dim in args.dims:
            r = latency(n, dim)
            print(f"| {n} | {dim} | {r['ms']:.2f} | {r['ms'] / TARGET_MS:.2f} | {r['matrix_x']:.2f} | "
                  f"{r['total_x']:.2f} | {r['mb']:.1f} |")
    if args.approx_sizes:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("\nfaiss is not installed (pip install napari-care[search]): approximate index skipped")
            args.approx_sizes = []
    for n in args.approx_sizes:
        for clusters in (1000, 0):
            rows = approximate(n, 128, clusters)
            print(f"\n{n} regions, 128-d, {'standard normal' if not clusters else f'{clusters} blobs'}: IVF-Flat "
                  f"{rows[0]['nlist']} lists, built and saved in {rows[0]['build_s']:.1f} s, loaded again in "
                  f"{rows[0]['load_s']:.1f} s; exact {rows[0]['exact_ms']:.1f} ms / query; memory: faiss index "
                  f"{rows[0]['ivf_x']:.2f}x the embeddings, with the metadata {rows[0]['x']:.2f}x")
            print("| nprobe | query ms (1 core) | / 50 ms target | recall@10 (target >= 0.95) |")
            print("|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['nprobe']} | {r['ms']:.2f} | {r['ms'] / TARGET_MS:.2f} | {r['recall']:.3f} |")
    if not (args.heldout / "truth").is_dir():
        print(f"\nno held-out cohort with truth at {args.heldout}: precision@10 skipped")
        return
    rows = heldout_rows(args.heldout)
    print(f"\nheld-out slides: {args.heldout} ({len(next(iter(rows.values())))} slides)")
    print("| representation | items | precision@10 (all) | precision@10 (other slides) | chance |")
    print("|---|---:|---:|---:|---:|")
    for name, parts in rows.items():
        vec, lab, slide = (np.concatenate(p) for p in zip(*parts))
        print(f"| {name} | {len(lab)} | {precision_at_10(vec, lab, slide):.3f} | "
              f"{precision_at_10(vec, lab, slide, other_slides=True):.3f} | {chance(lab):.3f} |")


if __name__ == "__main__":
    main()
