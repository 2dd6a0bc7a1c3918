"""CARE's sub-regions and candidate squares: integer-grid geometry in numpy (Eq. 1 and Eq. 3 of CARE_METHOD.md §2).

No torch here, so data workers (Stage I views, the method benchmark) compute geometry ahead without importing
the model. The soft-inclusion matrix C is never materialised: its column maxima come from the convex hull of the
grid (the point of a set farthest from any anchor is a hull vertex), and each patch's top candidates are searched
in a growing block of squares around its own, accepted only when a bound proves no square outside the block can
beat them (exact; checked against ``soft_inclusion_dense`` in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

__all__ = ["ANCHORS", "SubregionGeometry", "soft_inclusion_dense", "subregion_geometry"]

ANCHORS = ("center", "corner")


@dataclass(frozen=True)
class SubregionGeometry:
    """Sub-regions of one slide and each patch's candidate squares (grid units, numpy).

    grid: [N, 2] int64 (col, row), shifted so that the minimum is 0.
    patch_subregion: [N] own square of each patch; squares are numbered in raster order (row, col).
    square_ij: [M, 2] (square col, square row); anchors: [M, 2] float64 anchor s_i (x=col, y=row).
    col_max: [M] max_j d_ji (the column maxima of Eq. 3).
    candidates: [N, c] square ids sorted by inclusion (descending; ties: lower id), -1 where M < c.
    inclusion: [N, c] mu_ji of each candidate; distance: [N, c] d_ji; valid: [N, c] bool.
    rank: [N, c] spatial rank of each candidate, 0 = nearest anchor (Eq. 5).
    """

    grid: np.ndarray
    patch_subregion: np.ndarray
    square_ij: np.ndarray
    anchors: np.ndarray
    col_max: np.ndarray
    candidates: np.ndarray
    inclusion: np.ndarray
    distance: np.ndarray
    valid: np.ndarray
    rank: np.ndarray

    @property
    def n_subregions(self) -> int:
        return int(len(self.square_ij))


def _squares(grid: np.ndarray, k: int, anchor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 1: shifted grid, own square per patch, square (col, row) and anchors, squares in raster order."""
    g = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    g = g - g.min(axis=0)
    sq = g // k
    n_cols = int(sq[:, 0].max()) + 1
    squares, patch_sub = np.unique(sq[:, 1] * n_cols + sq[:, 0], return_inverse=True)
    square_ij = np.stack([squares % n_cols, squares // n_cols], axis=1)
    offset = (k - 1) / 2.0 if anchor == "center" else 0.0
    return g, patch_sub.reshape(-1), square_ij, square_ij * k + offset


def _inclusion(points: np.ndarray, anchors: np.ndarray, col_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3: d = ||t - s||, mu = 1 - d / D (mu = 1 where D = 0, i.e. one point on its anchor)."""
    d = np.sqrt(((points - anchors) ** 2).sum(axis=-1))
    return d, 1.0 - d / np.where(col_max > 0, col_max, 1.0)


def _hull_points(g: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of the grid points (or extreme points of a degenerate set)."""
    pts = np.unique(g, axis=0).astype(np.float64)
    if len(pts) <= 4:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # collinear: the two ends of the segment are among these extremes
        keys = np.stack([pts[:, 0], pts[:, 1], pts.sum(1), pts[:, 0] - pts[:, 1]], axis=1)
        return pts[np.unique(np.concatenate([keys.argmin(0), keys.argmax(0)]))]


def _farthest(points: np.ndarray, hull: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """max over the slide's patches of the distance to each point: the max over hull vertices."""
    out = np.empty(len(points))
    for a in range(0, len(points), chunk):
        diff = points[a : a + chunk, None, :] - hull[None]
        out[a : a + chunk] = np.sqrt((diff**2).sum(-1)).max(1)
    return out


def soft_inclusion_dense(grid: np.ndarray, k: int = 8, anchor: str = "center") -> np.ndarray:
    """Eq. 3 as the full [N, M] matrix C (reference for tests; O(N·M) memory)."""
    g, _, _, anchors = _squares(grid, k, anchor)
    d = np.sqrt(((g[:, None, :] - anchors[None]) ** 2).sum(-1))
    return 1.0 - d / np.where(d.max(axis=0) > 0, d.max(axis=0), 1.0)


def _rank_by_distance(distance: np.ndarray, valid: np.ndarray) -> np.ndarray:
    d = np.where(valid, distance, np.inf)
    return np.argsort(np.argsort(d, axis=1, kind="stable"), axis=1, kind="stable")


def subregion_geometry(grid: np.ndarray, k: int = 8, anchor: str = "center", n_candidates: int = 3) -> SubregionGeometry:
    """Sub-regions, column maxima and exact top-``n_candidates`` squares per patch (Eq. 1, 3, 4).

    Candidates are searched in a (2R+1)² block of squares around the patch's own square for R = 1, 2,
    4, 8, then over all squares. A patch's block result is accepted when the c-th best inclusion beats
    an upper bound for any square outside the block: with L the distance from t_j to the nearest anchor
    outside the block and F_j the distance from t_j to its farthest patch, every outside square has
    mu <= min(F_j / (L + F_j), 1 - L / max_i D_i) (triangle inequality D_i <= d_ji + F_j).
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r} is not one of {ANCHORS}")
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
        raise ValueError(f"grid of shape {grid.shape} must be [N, 2] with N >= 1")
    g, patch_sub, square_ij, anchors = _squares(grid, k, anchor)
    n, m, c = len(g), len(square_ij), n_candidates
    hull = _hull_points(g)
    col_max = _farthest(anchors, hull)
    far = _farthest(g.astype(np.float64), hull)
    d_max = float(col_max.max())
    n_sq_cols, n_sq_rows = int(square_ij[:, 0].max()) + 1, int(square_ij[:, 1].max()) + 1
    lookup = np.full((n_sq_rows, n_sq_cols), -1, dtype=np.int64)
    lookup[square_ij[:, 1], square_ij[:, 0]] = np.arange(m)
    offset = (k - 1) / 2.0 if anchor == "center" else 0.0

    cand = np.full((n, c), -1, dtype=np.int64)
    incl = np.zeros((n, c))
    dist = np.zeros((n, c))
    todo = np.arange(n)
    for radius in (1, 2, 4, 8):
        if not len(todo):
            break
        own = square_ij[patch_sub[todo]]  # [n, 2] (col, row) of the own square
        steps = np.arange(-radius, radius + 1)
        dr, dc = np.meshgrid(steps, steps, indexing="ij")  # raster order: ids increase along the block
        cols = own[:, :1] + dc.reshape(1, -1)
        rows = own[:, 1:] + dr.reshape(1, -1)
        inside = (cols >= 0) & (cols < n_sq_cols) & (rows >= 0) & (rows < n_sq_rows)
        ids = np.where(inside, lookup[rows.clip(0, n_sq_rows - 1), cols.clip(0, n_sq_cols - 1)], -1)
        ok = ids >= 0
        d, mu = _inclusion(g[todo, None, :].astype(np.float64), anchors[ids.clip(0)], col_max[ids.clip(0)])
        mu = np.where(ok, mu, -np.inf)
        order = np.argsort(-mu, axis=1, kind="stable")[:, :c]
        top_mu = np.take_along_axis(mu, order, 1)
        # Bound for squares outside the block (Eq. 3 upper bound, see docstring).
        t = g[todo].astype(np.float64)
        lo = (own - radius - 1) * k + offset
        hi = (own + radius + 1) * k + offset
        near = np.minimum(hi - t, t - lo).min(axis=1)
        bound = np.minimum(far[todo] / (near + far[todo]), 1.0 - near / max(d_max, 1e-300))
        covers_all = (own - radius <= 0).all(1) & (own[:, 0] + radius >= n_sq_cols - 1) & (own[:, 1] + radius >= n_sq_rows - 1)
        n_ok = min(c, m)
        accept = covers_all | (top_mu[:, n_ok - 1] > bound + 1e-12)
        sel = todo[accept]
        cand[sel] = np.where(np.isfinite(top_mu[accept]), np.take_along_axis(ids, order, 1)[accept], -1)
        incl[sel] = np.where(np.isfinite(top_mu[accept]), top_mu[accept], 0.0)
        dist[sel] = np.take_along_axis(d, order, 1)[accept]
        todo = todo[~accept]
    if len(todo):  # rare: exact search over every square, in row chunks
        rows_per = max(1, (1 << 22) // m)
        for a in range(0, len(todo), rows_per):
            part = todo[a : a + rows_per]
            d, mu = _inclusion(g[part, None, :].astype(np.float64), anchors[None], col_max[None])
            order = np.argsort(-mu, axis=1, kind="stable")[:, :c]
            k_eff = order.shape[1]
            cand[part, :k_eff] = order
            incl[part, :k_eff] = np.take_along_axis(mu, order, 1)
            dist[part, :k_eff] = np.take_along_axis(d, order, 1)
    valid = cand >= 0
    return SubregionGeometry(
        grid=g,
        patch_subregion=patch_sub,
        square_ij=square_ij,
        anchors=anchors,
        col_max=col_max,
        candidates=cand,
        inclusion=incl,
        distance=dist,
        valid=valid,
        rank=_rank_by_distance(dist, valid),
    )
