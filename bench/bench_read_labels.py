"""read_labels on a 20,000-row labels table: the duplicate check as it was (a full-array comparison per row,
O(n²)) against the one read_labels runs now (a Counter, O(n)), both on the same slide ids in this run.

    python bench/bench_read_labels.py [--rows 20000]

Prints the seconds of each duplicate check, their ratio, and the seconds of the whole read_labels call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def quadratic_duplicates(slides: np.ndarray) -> list[str]:
    """The check read_labels ran before: every row compared with the whole column."""
    return sorted({s for s in slides.tolist() if (slides == s).sum() > 1})


def linear_duplicates(slides: np.ndarray) -> list[str]:
    """The check read_labels runs now."""
    return sorted(s for s, n in Counter(slides.tolist()).items() if n > 1)


def best_of(fn, *args, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from care_core.evaluate.labels import read_labels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    slides = np.array([f"TCGA-{i:06d}-01Z" for i in range(args.rows)], dtype=object)
    assert quadratic_duplicates(slides) == linear_duplicates(slides) == []
    before = best_of(quadratic_duplicates, slides, repeat=1)
    after = best_of(linear_duplicates, slides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_text("slide,label,patient\n" + "".join(f"{s},{'AB'[i % 2]},p{i}\n" for i, s in enumerate(slides)))
        whole = best_of(read_labels, path)
    print(f"{args.rows} rows: duplicate check O(n^2) {before:.3f} s, O(n) {after * 1e3:.1f} ms "
          f"({before / after:.0f}x); read_labels now {whole * 1e3:.0f} ms in all")


if __name__ == "__main__":
    main()
