"""Find similar in the window: from the click to the gallery on screen, on a region index of 10k regions.

The held-out synthetic cohort (``build/demo-train/heldout``, written by scripts/train_demo.py, or any folder of
feature files with their slides) is indexed with the shipped demo CARE (``care index``); its shards are then
copied, with small noise on the embeddings, until the index holds ``--regions`` regions, each copy naming the
same real slide file. Timed, per query (a region of the first slide, k answers):

- cold: the first query, which loads the index (``RegionIndex``) before searching;
- warm: the next queries (the index stays loaded while its index.json is unchanged);
- each split into the search with its thumbnails (worker thread: ``find_similar``) and filling the gallery
  (Qt thread: ``SimilarPanel.show_items``, offscreen).

Target (issue 20): <= 2 s from the click to the gallery for a 10k-region index. The ratio printed is the
measured time over the target.

    python bench/bench_gallery.py [--heldout build/demo-train/heldout] [--regions 10000] [-k 12]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_S = 2.0


def grown_index(features: Path, folder: Path, regions: int) -> Path:
    """``care index`` of ``features``, its shards then copied (embeddings + N(0, 0.05²) noise) to ``regions``."""
    from care_core.search import build_index
    from care_core.search.index import INDEX_JSON

    index = build_index([features], folder)
    rng = np.random.default_rng(0)
    slides = dict(index["slides"])
    total, copy = sum(s["n_regions"] for s in slides.values()), 0
    while total < regions:
        copy += 1
        for name, entry in slides.items():
            if total >= regions:
                break
            with np.load(folder / entry["shard"]) as z:
                arrays = {k: z[k] for k in z.files}
            arrays["region_embeddings"] = arrays["region_embeddings"] + rng.normal(
                0, 0.05, arrays["region_embeddings"].shape).astype(np.float32)
            shard = f"{name}_copy{copy}.npz"
            np.savez(folder / shard, **arrays)
            index["slides"][f"{name}_copy{copy}"] = {**entry, "shard": shard}
            total += entry["n_regions"]
    (folder / INDEX_JSON).write_text(json.dumps(index))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heldout", type=Path, default=Path("build/demo-train/heldout"))
    ap.add_argument("--regions", type=int, default=10_000)
    ap.add_argument("-k", type=int, default=12)
    ap.add_argument("--queries", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy.QtWidgets import QApplication

    from care_core.regions.bundle import read_encoding_file
    from napari_care._gallery import SimilarPanel
    from napari_care._similar import SimilarQuery, find_similar
    from care_core.search import RegionIndex

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        folder = grown_index(args.heldout / "features", Path(tmp) / "index", args.regions)
        n = len(RegionIndex(folder))
        first = sorted(folder.glob("encodings/*_encoding.npz"))[0]
        enc = read_encoding_file(first)
        name = first.name[: -len("_encoding.npz")]
        panel = SimilarPanel()
        rows = []
        for q in range(args.queries):
            region = q % enc.n_regions
            query = SimilarQuery(enc, name, enc.meta["slide_path"], region, args.k, folder)
            t0 = time.perf_counter()
            items = find_similar(query)
            t1 = time.perf_counter()
            panel.show_items(items, "bench", t1 - t0)
            app.processEvents()
            t2 = time.perf_counter()
            rows.append(("cold" if q == 0 else "warm", t1 - t0, t2 - t1))
    print(f"Find similar on a {n}-region index, k={args.k} (thumbnails {items[0].thumbnail.shape[0]} px)\n")
    print("| query | search + thumbnails (s) | gallery filled (s) | click to gallery (s) | ÷ target 2 s |")
    print("|---|---|---|---|---|")
    for kind, search, show in rows:
        print(f"| {kind} | {search:.3f} | {show:.3f} | {search + show:.3f} | {(search + show) / TARGET_S:.2f} |")


if __name__ == "__main__":
    main()
