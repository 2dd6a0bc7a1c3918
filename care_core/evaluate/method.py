"""The method benchmark's measurements (shared/METHOD_BENCHMARK.md): partitions of a slide's patches into regions
and the trivial partitions CARE's must beat, region purity, the ROI and attention against ground truth.

Every function takes one slide's arrays: ``grid`` [N, 2] (col, row) patch grid indices, ``features`` [N, D],
``labels`` [N] ground-truth compartment (-1 = unlabelled), ``structure`` [N] local-structure id (0 = none). A
partition is [N] int64 region ids. Sizes are in patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["RoiReport", "kmeans_regions", "roi_report", "rule_best_regions", "slic_regions", "square_regions"]

_SIZE_TOLERANCE = 0.15  # a baseline's mean region size within 15 % of the target
_MIN_COMPONENT = 4  # connected components under this many patches are merged into a neighbour


def _raster(grid: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    g = np.asarray(grid, np.int64) - np.asarray(grid, np.int64).min(0)
    return g, (int(g[:, 1].max()) + 1, int(g[:, 0].max()) + 1)


def square_regions(grid: np.ndarray, k: int) -> np.ndarray:
    """The k x k grid squares (the ARG's sub-regions), numbered in raster order of the non-empty ones."""
    g, _ = _raster(grid)
    sq = g // k
    return np.unique(sq[:, 1] * (int(sq[:, 0].max()) + 1) + sq[:, 0], return_inverse=True)[1].reshape(-1)


def _merge_small(comp: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Merge components under `_MIN_COMPONENT` patches into the 4-neighbour component sharing the longest border."""
    g, shape = _raster(grid)
    img = np.full(shape, -1, np.int64)
    img[g[:, 1], g[:, 0]] = comp
    while True:
        ids, sizes = np.unique(img[img >= 0], return_counts=True)
        small = ids[sizes < _MIN_COMPONENT]
        merged = False
        for c in small:
            border: dict[int, int] = {}
            ys, xs = np.nonzero(img == c)
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                ny, nx = ys + dy, xs + dx
                ok = (ny >= 0) & (ny < shape[0]) & (nx >= 0) & (nx < shape[1])
                for n in img[ny[ok], nx[ok]]:
                    if n >= 0 and n != c:
                        border[int(n)] = border.get(int(n), 0) + 1
            if border:
                img[img == c] = max(border, key=lambda n: (border[n], -n))
                merged = True
        if not merged:
            break
    return np.unique(img[g[:, 1], g[:, 0]], return_inverse=True)[1].reshape(-1)


def _components(cluster: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """4-neighbour connected components of equal `cluster` on the grid, small ones merged."""
    g, shape = _raster(grid)
    img = np.full(shape, -1, np.int64)
    img[g[:, 1], g[:, 0]] = cluster
    comp = np.full(shape, -1, np.int64)
    n = 0
    for c in np.unique(cluster):
        lab, k = ndimage.label(img == c)
        comp[lab > 0] = lab[lab > 0] - 1 + n
        n += k
    return _merge_small(comp[g[:, 1], g[:, 0]], grid)


def _standardise(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float64)
    return (x - x.mean(0)) / np.where(x.std(0) > 1e-9, x.std(0), 1.0)


def _search(make, n_patches: int, target_size: float, hi: int) -> np.ndarray:
    """Bisect the integer knob of `make(knob) -> partition` (more knob, more regions) until the mean region
    size is within `_SIZE_TOLERANCE` of `target_size`; the closest partition found otherwise."""
    lo, best, best_err = 1, None, np.inf
    while lo <= hi:
        mid = (lo + hi) // 2
        part = make(mid)
        size = n_patches / (part.max() + 1)
        err = abs(size / target_size - 1)
        if err < best_err:
            best, best_err = part, err
        if err <= _SIZE_TOLERANCE:
            break
        if size > target_size:
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def kmeans_regions(features: np.ndarray, grid: np.ndarray, target_size: float, *, seed: int = 0) -> np.ndarray:
    """k-means of the standardised features, then connected components, k chosen to hit `target_size`."""
    from sklearn.cluster import KMeans

    x = _standardise(features)

    def make(k: int) -> np.ndarray:
        cluster = KMeans(n_clusters=min(k, len(x)), n_init=3, random_state=seed).fit_predict(x)
        return _components(cluster, grid)

    return _search(make, len(x), target_size, hi=max(2, int(2 * len(x) / target_size)))


def slic_regions(features: np.ndarray, grid: np.ndarray, target_size: float, *, compactness: float = 1.0) -> np.ndarray:
    """SLIC on 12 PCA components of the standardised features laid out on the patch grid (non-tissue masked),
    the first component scaled to unit standard deviation; `n_segments` chosen to hit `target_size`."""
    from skimage.segmentation import slic
    from sklearn.decomposition import PCA

    x = _standardise(features)
    pcs = PCA(n_components=min(12, x.shape[1], len(x)), random_state=0).fit_transform(x)
    pcs /= max(pcs[:, 0].std(), 1e-9)
    g, shape = _raster(grid)
    img = np.zeros((*shape, pcs.shape[1]))
    img[g[:, 1], g[:, 0]] = pcs
    mask = np.zeros(shape, bool)
    mask[g[:, 1], g[:, 0]] = True

    def make(n: int) -> np.ndarray:
        seg = slic(img, n_segments=n, compactness=compactness, mask=mask, channel_axis=-1, start_label=1,
                   enforce_connectivity=True)
        return np.unique(seg[g[:, 1], g[:, 0]], return_inverse=True)[1].reshape(-1)

    return _search(make, len(x), target_size, hi=max(2, int(3 * len(x) / target_size)))


def rule_best_regions(grid: np.ndarray, labels: np.ndarray, *, k: int = 8, anchor: str = "center",
                      n_candidates: int = 3) -> np.ndarray:
    """The best partition CARE's assignment rule allows: each labelled patch goes to the first of its candidate
    squares (in the ARG's order) whose majority compartment equals its own; otherwise it stays in its own square."""
    from care_core.model.subregions import subregion_geometry

    geo = subregion_geometry(np.asarray(grid, np.int64), k, anchor, n_candidates)
    labels = np.asarray(labels)
    own = geo.patch_subregion
    majority = np.full(geo.n_subregions, -2, np.int64)
    for s in range(geo.n_subregions):
        lab = labels[(own == s) & (labels >= 0)]
        if len(lab):
            majority[s] = np.bincount(lab).argmax()
    out = own.copy()
    for j in np.nonzero(labels >= 0)[0]:
        for c, ok in zip(geo.candidates[j], geo.valid[j]):
            if ok and majority[c] == labels[j]:
                out[j] = c
                break
    return np.unique(out, return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class RoiReport:
    """One slide's ROI against ground truth.

    compartment_share: {compartment id: share of the ROI's labelled patches}. structure_share: share of the ROI's
    patches in a local structure. holds_structure: the ROI is the region with most structure patches (None on a
    slide without one). is_largest / size_rank (0 = largest): by patch count. sharpness: max beta x regions (1 = flat).
    """

    compartment_share: dict[int, float]
    structure_share: float
    holds_structure: bool | None
    is_largest: bool
    size_rank: int
    sharpness: float


def roi_report(patch_region: np.ndarray, roi: int, beta: np.ndarray, labels: np.ndarray,
               structure: np.ndarray) -> RoiReport:
    """The ROI of one encoded slide (regions `patch_region`, ROI id `roi`, attention `beta` [R]) against truth."""
    region = np.asarray(patch_region)
    n_regions = len(beta)
    sizes = np.bincount(region, minlength=n_regions)
    in_roi = region == roi
    lab = np.asarray(labels)[in_roi]
    lab = lab[lab >= 0]
    shares = {int(c): float(np.mean(lab == c)) for c in np.unique(lab)} if len(lab) else {}
    struct = np.asarray(structure) > 0
    per_region = np.bincount(region[struct], minlength=n_regions)
    holds = bool(per_region[roi] == per_region.max()) if struct.any() else None
    return RoiReport(shares, float(struct[in_roi].mean()), holds, bool(sizes[roi] == sizes.max()),
                     int(np.sum(sizes > sizes[roi])), float(np.max(beta) * n_regions))
