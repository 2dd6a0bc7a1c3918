"""iBOT-style block masks on a view's patch grid: which student tokens become the mask token.

Rectangles of grid cells (random area and aspect ratio, as in BEiT/iBOT) are masked until exactly
round(ratio * n) of the view's patches are masked; a rectangle that would overshoot masks only its first
cells in raster order. All randomness comes from the caller's `np.random.Generator`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["block_mask", "view_mask"]


def block_mask(
    grid: np.ndarray,
    ratio: float,
    rng: np.random.Generator,
    *,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 100,
) -> np.ndarray:
    """bool [n]: True for masked patches of the view with integer grid [n, 2] (col, row).

    ratio: share of the view's patches to mask, in [0, 1); exactly round(ratio * n) are masked.
    min_block: smallest rectangle area in cells; aspect: range of height/width (log-uniform).
    After `max_tries` rectangles that mask nothing new (a very sparse grid), the rest are picked at random.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio={ratio} must be in [0, 1)")
    g = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    n = len(g)
    mask = np.zeros(n, dtype=bool)
    target = int(round(ratio * n))
    if target == 0:
        return mask
    g = g - g.min(axis=0)
    width, height = (int(v) + 1 for v in g.max(axis=0))
    cell = np.full((height, width), -1, dtype=np.int64)
    cell[g[:, 1], g[:, 0]] = np.arange(n)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    count, fails = 0, 0
    while count < target and fails < max_tries:
        remaining = target - count
        area = rng.uniform(min_block, max(min_block, remaining))
        ar = math.exp(rng.uniform(log_lo, log_hi))
        h = min(max(int(round(math.sqrt(area * ar))), 1), height)
        w = min(max(int(round(math.sqrt(area / ar))), 1), width)
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        ids = cell[top:top + h, left:left + w].ravel()
        new = ids[ids >= 0]
        new = new[~mask[new]][:remaining]
        fails = fails + 1 if not len(new) else 0
        mask[new] = True
        count += len(new)
    if count < target:
        mask[rng.choice(np.flatnonzero(~mask), target - count, replace=False)] = True
    return mask


def view_mask(grid: np.ndarray, rng: np.random.Generator, *, prob: float, ratio_range: tuple[float, float]) -> np.ndarray:
    """bool [n]: with probability `prob` a block mask with ratio drawn uniformly from `ratio_range`, else none
    (iBOT masks half of the global views: prob 0.5, ratio 0.1-0.5)."""
    n = len(grid)
    if rng.random() >= prob:
        return np.zeros(n, dtype=bool)
    return block_mask(grid, float(rng.uniform(*ratio_range)), rng)
