"""Stage I augmentations of one view, on features [n, D] and integer grids [n, 2] (numpy).

Feature space (the paper's): channel-wise brightness scale, contrast around the view's channel mean,
quantisation ("posterize") over each channel's range in the view. Grid (our choice): flips and 90°
rotations of the integer (col, row) coordinates, re-shifted to start at 0; patch dropout. Each function
is pure; the random ones take the caller's `np.random.Generator` and use no global state.
"""

from __future__ import annotations

import numpy as np

__all__ = ["brightness", "contrast", "posterize", "flip_rotate", "patch_dropout"]


def brightness(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Channel-wise brightness: x [n, D] times scale [D] (or a scalar)."""
    return (x * np.asarray(scale, dtype=x.dtype)).astype(x.dtype, copy=False)


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Contrast: each channel scaled by `factor` around its mean over the view's patches."""
    factor = x.dtype.type(factor)
    out = x * factor
    out += x.mean(axis=0, keepdims=True) * (1 - factor)  # (x - mean) * f + mean, in two passes
    return out


def posterize(x: np.ndarray, levels: int) -> np.ndarray:
    """Quantise each channel to `levels` (>= 2) evenly spaced values over its [min, max] in the view.

    With 2 levels every value becomes its channel's min or max (nearest); a constant channel is unchanged.
    """
    if levels < 2:
        raise ValueError(f"levels={levels}: posterize needs at least 2 levels")
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    span = hi - lo
    to_steps = np.divide(levels - 1, span, out=np.zeros_like(span), where=span > 0)  # 0: constant channel
    q = np.rint((x - lo) * to_steps)
    q *= span / (levels - 1)
    q += lo
    return q


def flip_rotate(grid: np.ndarray, *, flip_x: bool = False, flip_y: bool = False, quarter_turns: int = 0) -> np.ndarray:
    """Integer grid [n, 2] (col, row) mirrored (flip_x: left-right, flip_y: top-bottom), then turned by
    `quarter_turns` × 90° counter-clockwise as seen on screen (rows grow downwards), then shifted so that
    each axis starts at 0. One turn maps (col, row) -> (row, -col) before the shift."""
    g = np.asarray(grid, dtype=np.int64).reshape(-1, 2).copy()
    if flip_x:
        g[:, 0] = -g[:, 0]
    if flip_y:
        g[:, 1] = -g[:, 1]
    for _ in range(quarter_turns % 4):
        g = np.stack([g[:, 1], -g[:, 0]], axis=1)
    return g - g.min(axis=0) if len(g) else g


def patch_dropout(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the patches kept when floor(ratio * n) of n are dropped at random (>= 1 kept)."""
    n_drop = min(int(np.floor(ratio * n)), n - 1)
    if n_drop <= 0:
        return np.arange(n)
    return np.sort(rng.permutation(n)[n_drop:])
