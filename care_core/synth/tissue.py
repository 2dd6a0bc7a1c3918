"""Compartment layout of a synthetic slide: where tissue lies and which compartment holds each place.

Every smooth field is sampled on the mask grid (one point per `MASK_DOWNSAMPLE` level-0 px, at the
pixel centre); labels anywhere else come from the same fields interpolated there, so the saved mask
and the rendered pixels agree. Compartments are a noise-warped, weighted Voronoi partition of the
tissue, each cell a few millimetres across.

Local structures sit on top of the compartments, present on some slides and absent on others, each a
disc with a rippled outline:

- ``TIL``: lymphocytes infiltrating a tumour nest, 0.55–0.85 mm in radius, centred at the deepest point of a
  tumour cell (p = 0.5 per slide); only tumour inside the disc is infiltrated. It stays tumour in the mask.
- ``TLS``: tertiary lymphoid aggregates, 1–3 discs of 0.3–0.45 mm radius in stroma (p = 0.5 per slide): dense
  lymphocytes around a germinal centre of larger pale nuclei; only stroma and fat inside a disc become one. It
  is lymphocytes in the mask.

They are drawn from their own random stream, so a slide's compartments do not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "COMPARTMENTS",
    "MASK_DOWNSAMPLE",
    "RENDER_DOWNSAMPLE",
    "SEPTUM",
    "STRUCTURES",
    "TIL",
    "TLS",
    "Layout",
    "make_layout",
    "render_labels",
    "to_compartments",
    "to_structures",
]

COMPARTMENTS: dict[int, str] = {1: "tumour", 2: "stroma", 3: "lymphocytes", 4: "fat", 5: "necrosis"}
SEPTUM = 6  # render-only label: fibrous strands between tumour nests (a tumour pixel in the mask)
TIL = 7  # render label: tumour nest infiltrated by lymphocytes (tumour in the mask, structure 1)
TLS = 8  # render label: tertiary lymphoid structure (lymphocytes in the mask, structure 2)
STRUCTURES: dict[int, str] = {1: "TIL", 2: "TLS"}  # structure ids of the structure mask
_STRUCTURE_P = 0.5  # chance that a slide has each structure
_TIL_RADIUS_UM = (550.0, 850.0)
_TLS_RADIUS_UM = (300.0, 450.0)
MASK_DOWNSAMPLE = 16  # level-0 px per mask px
RENDER_DOWNSAMPLE = 2  # level-0 px per render-label px (compartment boundaries step by 1 µm at 0.5 mpp)

_CELL_AREA_MM2 = 7.0  # mean tissue area of one Voronoi cell (~2.6 mm across)
_EXTRA_LABEL_P = np.array([0.40, 0.34, 0.13, 0.13, 0.0])  # odds of cells beyond one each (necrosis once)
_MIN_SHARE = 0.04  # smallest share of the tissue any compartment may get
_LABEL_SCALE = np.array([0.0, 1.1, 1.0, 0.9, 1.0, 0.8])  # relative cell size per compartment


@dataclass(frozen=True)
class Layout:
    """Smooth fields on the mask grid plus the Voronoi cells that place the compartments."""

    width_px: int
    height_px: int
    mpp: float
    fields: np.ndarray  # (4, h_mask, w_mask) float32: warp x (px), warp y (px), tissue score, septum noise
    cell_xy_px: np.ndarray  # (n, 2) float64 level-0 (x, y) of each cell's seed
    cell_scale: np.ndarray  # (n,) float64 relative size of each cell
    cell_label: np.ndarray  # (n,) uint8 compartment of each cell
    structures: tuple = ()  # (render label TIL or TLS, x px, y px, radius px) of each local structure disc


def _gauss_weights(n_out: int, n_in: int, step: float) -> np.ndarray:
    """(n_out, n_in) row-normalised Gaussian interpolation weights from a grid of spacing `step`."""
    pos = np.arange(n_out) / step + 2.0
    w = np.exp(-0.5 * (pos[:, None] - np.arange(n_in)[None, :]) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], wavelength_cells: float) -> np.ndarray:
    """Unit-variance smooth noise of `shape` whose features are about `wavelength_cells` grid cells wide."""
    step = max(wavelength_cells / 4.0, 1.0)
    coarse_shape = (int(np.ceil(shape[0] / step)) + 5, int(np.ceil(shape[1] / step)) + 5)
    white = rng.standard_normal(coarse_shape)
    out = _gauss_weights(shape[0], coarse_shape[0], step) @ white @ _gauss_weights(shape[1], coarse_shape[1], step).T
    return ((out - out.mean()) / out.std()).astype(np.float32)


def _tissue_score(rng: np.random.Generator, xw: np.ndarray, yw: np.ndarray, width_px: int,
                  height_px: int) -> np.ndarray:
    """Signed tissue score at warped level-0 coords: > 0 inside one large piece or a small fragment."""
    cx = width_px * (0.5 + rng.uniform(-0.03, 0.03))
    cy = height_px * (0.5 + rng.uniform(-0.03, 0.03))
    ax, ay = 0.45 * width_px, 0.43 * height_px
    power = 2.8
    score = 1.0 - (np.abs((xw - cx) / ax) ** power + np.abs((yw - cy) / ay) ** power) ** (1.0 / power)
    short = min(width_px, height_px)
    for _ in range(int(rng.integers(1, 3))):
        corner_x = rng.choice([0.1, 0.9]) * width_px
        corner_y = rng.choice([0.12, 0.88]) * height_px
        radius = rng.uniform(0.06, 0.09) * short
        frag = 1.0 - np.hypot(xw - corner_x, yw - corner_y) / radius
        score = np.maximum(score, frag)
    return score.astype(np.float32)


def _farthest_points(rng: np.random.Generator, candidates: np.ndarray, n: int) -> np.ndarray:
    """Greedy farthest-point choice of `n` rows of `candidates` (m, 2): evenly spread seeds."""
    chosen = [int(rng.integers(len(candidates)))]
    dist = np.hypot(*(candidates - candidates[chosen[0]]).T)
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.hypot(*(candidates - candidates[nxt]).T))
    return candidates[chosen]


def make_layout(width_px: int, height_px: int, mpp: float, seed: int) -> Layout:
    """Draw the tissue outline and compartment cells of a `width_px` x `height_px` slide at `mpp` µm/px."""
    rng = np.random.default_rng([seed, 101])
    g = MASK_DOWNSAMPLE
    shape = (-(-height_px // g) + 1, -(-width_px // g) + 1)
    ys = (np.arange(shape[0]) * g + g / 2).astype(np.float32)[:, None]
    xs = (np.arange(shape[1]) * g + g / 2).astype(np.float32)[None, :]
    tissue_area_mm2 = 0.75 * width_px * height_px * (mpp / 1000.0) ** 2
    n_cells = max(8, round(tissue_area_mm2 / _CELL_AREA_MM2))
    cell_px = np.sqrt(width_px * height_px * 0.75 / n_cells)
    fine_um = 220.0

    warp_x = 0.4 * cell_px * _smooth_noise(rng, shape, 1.3 * cell_px / g)
    warp_y = 0.4 * cell_px * _smooth_noise(rng, shape, 1.3 * cell_px / g)
    warp_x += 0.12 * cell_px * _smooth_noise(rng, shape, 0.45 * cell_px / g)
    warp_y += 0.12 * cell_px * _smooth_noise(rng, shape, 0.45 * cell_px / g)
    warp_x += (30.0 / mpp) * _smooth_noise(rng, shape, fine_um / mpp / g)
    warp_y += (30.0 / mpp) * _smooth_noise(rng, shape, fine_um / mpp / g)
    short = min(width_px, height_px)
    edge_x, edge_y = (0.05 * short * _smooth_noise(rng, shape, 0.4 * short / g)
                      + (25.0 / mpp) * _smooth_noise(rng, shape, 150.0 / mpp / g) for _ in range(2))
    score = _tissue_score(rng, xs + edge_x, ys + edge_y, width_px, height_px)
    holes = _smooth_noise(rng, shape, 240.0 / mpp / g)
    score = np.where(holes > 2.9, np.minimum(score, (2.9 - holes) * 0.05), score)
    septum = _smooth_noise(rng, shape, 200.0 / mpp / g)

    inner = np.argwhere(score > 0.08)
    if len(inner) == 0:
        inner = np.argwhere(score > score.max() - 1e-3)
    pick = inner[rng.choice(len(inner), size=min(len(inner), 4000), replace=False)]
    cand = np.stack([pick[:, 1] * g + g / 2, pick[:, 0] * g + g / 2], axis=1).astype(np.float64)
    cell_xy = _farthest_points(rng, cand, n_cells)
    labels = rng.choice(np.arange(1, 6), size=n_cells, p=_EXTRA_LABEL_P)
    labels[rng.permutation(n_cells)[:5]] = np.arange(1, 6)
    scale = rng.uniform(0.85, 1.2, size=n_cells) * _LABEL_SCALE[labels]
    fields = np.stack([warp_x, warp_y, score, septum]).astype(np.float32)
    layout = Layout(width_px, height_px, float(mpp), fields, cell_xy, scale, labels.astype(np.uint8))
    for _ in range(8):  # grow any compartment squeezed below _MIN_SHARE of the tissue by its neighbours
        counts = np.bincount(to_compartments(_labels_from_fields(layout, xs, ys, fields)).ravel(), minlength=6)[1:6]
        small = counts < _MIN_SHARE * counts.sum()
        if not small.any():
            break
        scale = scale * np.where(small[labels - 1], 1.25, 1.0)
        layout = Layout(width_px, height_px, float(mpp), fields, cell_xy, scale, labels.astype(np.uint8))
    coarse = _labels_from_fields(layout, xs, ys, fields)
    return replace(layout, structures=_place_structures(np.random.default_rng([seed, 103]), coarse, mpp))


def _place_structures(rng: np.random.Generator, coarse: np.ndarray, mpp: float) -> tuple:
    """Local structure discs on mask-grid labels `coarse`: a TIL disc at the deepest point of a tumour nest, TLS
    discs in stroma wide enough to hold them; each kind present with probability `_STRUCTURE_P`."""
    g = MASK_DOWNSAMPLE
    out = []
    has_til, has_tls = rng.random(2) < _STRUCTURE_P
    r_til = rng.uniform(*_TIL_RADIUS_UM) / mpp
    n_tls = int(rng.integers(1, 4))
    r_tls = rng.uniform(*_TLS_RADIUS_UM, size=n_tls) / mpp
    if has_til:
        depth = ndimage.distance_transform_edt(np.isin(coarse, (1, SEPTUM)))
        if depth.max() > 0:
            y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
            out.append((TIL, x * g + g / 2, y * g + g / 2, float(r_til)))
    if has_tls:
        depth = ndimage.distance_transform_edt(coarse == 2) * g
        for r in r_tls:
            inside = np.argwhere(depth >= 0.8 * r)
            if not len(inside):
                break
            y, x = inside[rng.integers(len(inside))]
            out.append((TLS, x * g + g / 2, y * g + g / 2, float(r)))
            yy, xx = np.ogrid[: depth.shape[0], : depth.shape[1]]
            depth[(yy - y) ** 2 + (xx - x) ** 2 < (3 * r / g) ** 2] = 0  # aggregates apart from each other
    return tuple(out)


def _labels_from_fields(layout: Layout, x: np.ndarray, y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Render labels at level-0 coords `x`, `y` (broadcastable) given fields `f` sampled there."""
    xw, yw = x + f[0], y + f[1]
    best = np.full(np.broadcast_shapes(xw.shape, yw.shape), np.inf, dtype=np.float32)
    label = np.zeros(best.shape, dtype=np.uint8)
    for (sx, sy), s, lab in zip(layout.cell_xy_px, layout.cell_scale, layout.cell_label):
        d = ((xw - np.float32(sx)) ** 2 + (yw - np.float32(sy)) ** 2) * np.float32(1.0 / s**2)
        closer = d < best
        best = np.where(closer, d, best)
        label[closer] = lab
    label[(label == 1) & (np.abs(f[3]) < 0.2)] = SEPTUM
    for kind, sx, sy, r in layout.structures:  # unwarped discs, their outline rippled by the septum noise
        inside = (x - np.float32(sx)) ** 2 + (y - np.float32(sy)) ** 2 < (np.float32(r) * (1 + 0.15 * f[3])) ** 2
        label[inside & np.isin(label, (1, SEPTUM) if kind == TIL else (2, 4))] = kind
    label[f[2] <= 0] = 0
    return label


def render_labels(layout: Layout, height_px: int, width_px: int, step_px: int) -> np.ndarray:
    """Render labels (0 glass, 1-5 compartments, `SEPTUM`) on a grid of `step_px` level-0 px.

    Covers level-0 rows [0, height_px) and columns [0, width_px), each value taken at its grid cell's
    centre; `step_px` divides `MASK_DOWNSAMPLE`. Away from boundaries the label of the nearest mask-grid
    point is exact, so only points near a boundary are evaluated. Returns uint8 (ceil(h/step), ceil(w/step)).
    """
    g = MASK_DOWNSAMPLE
    hm, wm = layout.fields.shape[1:]
    ym = (np.arange(hm) * g + g / 2).astype(np.float32)[:, None]
    xm = (np.arange(wm) * g + g / 2).astype(np.float32)[None, :]
    coarse = _labels_from_fields(layout, xm, ym, layout.fields)
    key = coarse + np.uint8(16) * (layout.fields[3] > 0)
    mixed = ndimage.maximum_filter(key, 3, mode="nearest") != ndimage.minimum_filter(key, 3, mode="nearest")
    ys = np.arange(-(-height_px // step_px)) * step_px + step_px / 2
    xs = np.arange(-(-width_px // step_px)) * step_px + step_px / 2
    iy = np.clip(np.round((ys - g / 2) / g).astype(np.int64), 0, hm - 1)
    ix = np.clip(np.round((xs - g / 2) / g).astype(np.int64), 0, wm - 1)
    out = coarse[iy][:, ix]
    rows, cols = np.nonzero(mixed[iy][:, ix])
    for part in np.array_split(np.arange(len(rows)), max(1, len(rows) // 2_000_000)):
        py = ys[rows[part]].astype(np.float32)
        px = xs[cols[part]].astype(np.float32)
        grid = np.stack([(py - g / 2) / g, (px - g / 2) / g])
        f = np.stack([ndimage.map_coordinates(field, grid, order=1, mode="nearest") for field in layout.fields])
        out[rows[part], cols[part]] = _labels_from_fields(layout, px, py, f)
    return out


def to_compartments(labels: np.ndarray) -> np.ndarray:
    """Map render labels to mask labels (septa and infiltrated nests are tumour; TLS are lymphocytes)."""
    lut = np.array([0, 1, 2, 3, 4, 5, 1, 1, 3], np.uint8)
    return lut[labels]


def to_structures(labels: np.ndarray) -> np.ndarray:
    """Map render labels to structure ids (`STRUCTURES`; 0 = none)."""
    lut = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2], np.uint8)
    return lut[labels]
