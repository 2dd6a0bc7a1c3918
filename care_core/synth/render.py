"""H&E-like pixels for a synthetic slide, one band of rows at a time.

Colour follows Beer–Lambert: a pixel's optical density (base 10) is a sum of haematoxylin (H),
eosin (E) and a neutral term times their stain vectors, and its intensity is 255 · 10^(−OD).
Each render label has a periodic background texture (collagen fibres, fat membranes, cytoplasm,
necrotic debris, glass) built once per seed; nuclei are drawn on top as Beer–Lambert sprites at
positions drawn per band of rows from a seeded jittered process in level-0 coordinates, so
neighbouring tiles agree at their borders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft, ndimage
from scipy.spatial import cKDTree

from care_core.synth.tissue import RENDER_DOWNSAMPLE, Layout, render_labels

__all__ = ["STAIN_E", "STAIN_H", "Renderer"]

STAIN_H = np.array([0.60, 0.72, 0.35]) / np.linalg.norm([0.60, 0.72, 0.35])  # haematoxylin OD per unit, (R, G, B)
STAIN_E = np.array([0.216, 0.801, 0.558]) / np.linalg.norm([0.216, 0.801, 0.558])  # eosin
_NEUTRAL = np.full(3, 1.0)  # grey absorbance (glass, necrotic haze)

_TEXTURE_PX = (1024, 2048)  # side of the periodic background textures: small slides, slides over 8192 px
_WARP_UM = ((2500.0, 80.0), (800.0, 25.0))  # (wavelength, amplitude) of the 1-D texture warps, µm
_BAND_PX = 512  # level-0 rows per nucleus band (one seeded draw each)
_N_ORIENT = 12  # orientations of spindle sprites


# ---------------------------------------------------------------- background textures
def _fft_noise(rng: np.random.Generator, size: int, sigma_px: float, sigma_across_px: float | None = None,
               angle: float = 0.0) -> np.ndarray:
    """Periodic unit-variance Gaussian-filtered noise (size, size); anisotropic when `sigma_across_px` is set,
    with its long axis at `angle` radians from x."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    fy = fft.fftfreq(size)[:, None].astype(np.float32)
    fx = fft.rfftfreq(size)[None, :].astype(np.float32)
    along = fx * np.cos(angle) + fy * np.sin(angle)
    across = -fx * np.sin(angle) + fy * np.cos(angle)
    s_across = sigma_px if sigma_across_px is None else sigma_across_px
    gain = np.exp(-2.0 * np.pi**2 * (sigma_px**2 * along**2 + s_across**2 * across**2))
    out = fft.irfft2(fft.rfft2(white) * gain, s=(size, size))
    return ((out - out.mean()) / out.std()).astype(np.float32)


def _warp_periodic(img: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sample periodic `img` at (y + dy, x + dx) with wrap-around, bilinear."""
    n = img.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return ndimage.map_coordinates(img, [yy + dy, xx + dx], order=1, mode="grid-wrap")


def _od_to_rgb(h: np.ndarray, e: np.ndarray, neutral: np.ndarray | float) -> np.ndarray:
    """Beer–Lambert: (…, 3) uint8 RGB from H, E and neutral optical densities."""
    od = (h[..., None] * STAIN_H.astype(np.float32) + e[..., None] * STAIN_E.astype(np.float32)
          + np.asarray(neutral, np.float32)[..., None] * _NEUTRAL.astype(np.float32))
    return np.clip(np.float32(255.0) * np.power(np.float32(10.0), -od) + 0.5, 0, 255).astype(np.uint8)


def _fibres(rng: np.random.Generator, n: int, px_per_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Wavy collagen bundles in [0, 1] and their local orientation (radians) on a periodic (n, n) grid."""
    a1, a2 = rng.uniform(0, np.pi, size=2)
    a2 = a1 + rng.uniform(0.6, 1.2)
    f1 = _fft_noise(rng, n, 14 * px_per_um, 1.1 * px_per_um, a1)
    f2 = _fft_noise(rng, n, 14 * px_per_um, 1.1 * px_per_um, a2)
    mix = 1 / (1 + np.exp(-3.0 * _fft_noise(rng, n, 45 * px_per_um)))
    fib = f1 * mix + f2 * (1 - mix)
    dx = 22 * px_per_um * _fft_noise(rng, n, 40 * px_per_um)
    dy = 22 * px_per_um * _fft_noise(rng, n, 40 * px_per_um)
    fib = _warp_periodic(fib / fib.std(), dx, dy)
    bundles = 1 / (1 + np.exp(-2.2 * (fib + 0.3)))
    # a fibre along t before warping (x -> x + d(x)) runs along J^-1 t after it, J = I + grad d
    base = _warp_periodic(np.where(mix > 0.5, a1, a2).astype(np.float32), dx, dy)
    tx, ty = np.cos(base), np.sin(base)
    jxx, jxy = 1 + np.gradient(dx, axis=1), np.gradient(dx, axis=0)
    jyx, jyy = np.gradient(dy, axis=1), 1 + np.gradient(dy, axis=0)
    orient = np.arctan2(jxx * ty - jyx * tx, jyy * tx - jxy * ty)
    return bundles.astype(np.float32), orient.astype(np.float32)


def _fat_membranes(rng: np.random.Generator, n: int, px_per_um: float) -> np.ndarray:
    """Distance (px) to the nearest adipocyte wall on a periodic (n, n) grid; walls are a Voronoi net."""
    cells = max(2, round(n / (85 * px_per_um)))
    spacing = n / cells
    gy, gx = np.mgrid[0:cells, 0:cells]
    sy = ((gy + 0.5 + rng.uniform(-0.38, 0.38, gy.shape)) * spacing).ravel()
    sx = ((gx + 0.5 + rng.uniform(-0.38, 0.38, gx.shape)) * spacing).ravel()
    seeds = np.stack([sx, sy], axis=1) % n
    half = n // 2
    yy, xx = np.mgrid[0:half, 0:half].astype(np.float32) * 2.0
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    _, nearest = cKDTree(seeds, boxsize=n).query(points, k=2)
    d1 = (points - seeds[nearest[:, 0]] + n / 2) % n - n / 2  # offset from the nearest seed, periodic
    d2 = (points - seeds[nearest[:, 1]] + n / 2) % n - n / 2
    gap = np.maximum(np.hypot(*(d2 - d1).T), 1e-3)
    # distance to the bisector of the two nearest seeds (the wall between their cells)
    wall = ((d2**2).sum(axis=1) - (d1**2).sum(axis=1)) / (2 * gap)
    wall = wall.reshape(half, half).astype(np.float32)
    full = ndimage.zoom(wall, 2, order=1, mode="grid-wrap", grid_mode=True)
    return full.astype(np.float32)


@dataclass(frozen=True)
class _Textures:
    """Periodic background per render label packed as RGBA uint32 (label, y, x) flattened; fibre orientation."""

    rgba: np.ndarray  # (n_labels * size * size,) uint32
    orient: np.ndarray  # (size, size) float32 collagen orientation, radians
    size: int


@lru_cache(maxsize=2)
def _textures(seed: int, mpp: float, size: int) -> _Textures:
    """Build (size, size) textures for render labels 0..TLS (glass, tumour, stroma, lymphocytes, fat, necrosis, septum,
    infiltrated tumour, lymphoid aggregate)."""
    rng = np.random.default_rng([seed, 202])
    n, k = size, 1.0 / mpp
    fine = _fft_noise(rng, n, 0.7 * k)
    grain = _fft_noise(rng, n, 2.0 * k)
    blotch = _fft_noise(rng, n, 6.0 * k)
    bundles, orient = _fibres(rng, n, k)
    wall = _fat_membranes(rng, n, k)
    wall = wall + 0.5 * k * _fft_noise(rng, n, 4.0 * k)
    debris = np.clip(_fft_noise(rng, n, 0.9 * k) - 2.2, 0, None)

    layers = []
    glass = (np.zeros((n, n), np.float32), 0.004 * fine, 0.018 + 0.003 * fine)
    tumour = (0.13 + 0.03 * grain + 0.02 * blotch, 0.25 + 0.05 * grain + 0.04 * blotch, 0.02)
    stroma_e = 0.06 + 0.40 * bundles + 0.05 * fine + 0.05 * blotch * bundles
    stroma = (0.025 + 0.01 * fine, stroma_e, 0.025)
    lymph = (0.11 + 0.03 * grain, 0.12 + 0.03 * grain + 0.02 * blotch, 0.02)
    membrane = np.exp(-((wall / (0.9 * k)) ** 2))
    fat = (0.02 * membrane, 0.012 + 0.36 * membrane + 0.006 * fine, 0.02)
    necrosis = (0.015 + 0.01 * blotch + 0.01 * grain + 0.8 * debris, 0.2 + 0.07 * blotch + 0.03 * grain, 0.1)
    septum_e = 0.10 + 0.42 * np.roll(bundles, (n // 2, n // 3), axis=(0, 1)) + 0.05 * fine
    septum = (0.03 + 0.01 * fine, septum_e, 0.03)
    til = (0.15 + 0.04 * grain + 0.02 * blotch, 0.21 + 0.05 * grain + 0.03 * blotch, 0.02)  # cytoplasm between lymphocytes
    tls = (0.14 + 0.05 * grain, 0.09 + 0.02 * grain + 0.01 * blotch, 0.015)  # basophilic, little eosin
    for h, e, neutral in (glass, tumour, stroma, lymph, fat, necrosis, septum, til, tls):
        rgb = _od_to_rgb(np.broadcast_to(h, (n, n)), np.broadcast_to(e, (n, n)), np.broadcast_to(neutral, (n, n)))
        rgba = np.concatenate([rgb, np.full((n, n, 1), 255, np.uint8)], axis=2)
        layers.append(rgba.reshape(-1, 4).view(np.uint32).ravel())
    return _Textures(np.concatenate(layers), orient, n)


def _warp_1d(rng: np.random.Generator, n: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 1-D texture offset over `n` px: int32 offsets (px) and their float derivative.

    Offsets of textures by smooth functions of x and y shear and stretch them by up to ~20 %, so the
    periodic textures do not repeat visibly across a slide."""
    xs = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    for wavelength_um, amplitude_um in _WARP_UM:
        step = wavelength_um / mpp / 4.0
        knots = ndimage.gaussian_filter1d(rng.standard_normal(int(n / step) + 6), 1.0)
        knots /= knots.std() + 1e-9
        out += amplitude_um / mpp * np.interp(xs / step + 2.0, np.arange(knots.size), knots)
    return np.round(out).astype(np.int32), np.gradient(out).astype(np.float32)


# ---------------------------------------------------------------- nucleus sprites
@dataclass(frozen=True)
class _Sprites:
    """Nucleus sprites as uint16 transmittance (256 = clear) with their half sizes, grouped by kind."""

    trans: tuple[np.ndarray, ...]  # each (h, w, 4) uint16
    half: np.ndarray  # (n, 2) int (half height, half width)
    kind_start: dict[str, int]
    kind_count: dict[str, int]


def _nucleus(rng: np.random.Generator, a_px: float, b_px: float, angle: float, base_od: float, rim_od: float,
             speckle_od: float, irregular: float, bend: float = 0.0, nucleoli: int = 0, k: float = 2.0) -> np.ndarray:
    """One nucleus as (h, w, 4) uint16 transmittance: an irregular ellipse of semi-axes a, b px."""
    r = int(np.ceil(max(a_px, b_px) * (1 + irregular) + abs(bend) * a_px + 2))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    v = v - bend * (u**2) / max(a_px, 1.0)
    phi = np.arctan2(v / b_px, u / a_px)
    wobble = 1.0 + sum(irregular * rng.uniform(0.2, 1.0) * np.cos(m * phi + rng.uniform(0, 2 * np.pi))
                       for m in (2, 3, 5))
    rn = np.sqrt((u / a_px) ** 2 + (v / b_px) ** 2) / wobble
    depth = (1.0 - rn) * min(a_px, b_px)
    alpha = np.clip(depth + 0.5, 0.0, 1.0)
    speckle = ndimage.gaussian_filter(rng.standard_normal(alpha.shape), 0.35 * k)
    speckle /= speckle.std() + 1e-6
    h_od = alpha * (base_od + rim_od * np.exp(-((depth / (0.6 * k)) ** 2)) + speckle_od * speckle)
    e_od = 0.12 * alpha
    for _ in range(nucleoli):
        cy, cx = rng.uniform(-0.4, 0.4, 2) * np.array([b_px, a_px])
        rad = rng.uniform(0.6, 0.9) * k
        spot = np.exp(-(((v - cy) ** 2 + (u - cx) ** 2) / rad**2) ** 2) * alpha
        h_od = h_od + 0.45 * spot
        e_od = e_od + 0.35 * spot
    od = np.clip(h_od, 0, None)[..., None] * STAIN_H + e_od[..., None] * STAIN_E
    trans = np.round(256.0 * np.power(10.0, -od)).astype(np.uint16)
    keep = alpha > 0.02
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    trans = trans[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.concatenate([trans, np.full((*trans.shape[:2], 1), 256, np.uint16)], axis=2)


@lru_cache(maxsize=4)
def _sprites(seed: int, mpp: float) -> _Sprites:
    """Sprite bank: pleomorphic tumour nuclei, lymphocytes, spindle nuclei per orientation, necrotic debris."""
    rng = np.random.default_rng([seed, 303])
    k = 1.0 / mpp
    groups: dict[str, list[np.ndarray]] = {"tumour": [], "lymph": [], "spindle": [], "debris": []}
    for _ in range(64):
        d_um = rng.uniform(9.0, 15.0)
        vesicular = rng.random() < 0.5
        groups["tumour"].append(_nucleus(
            rng, 0.5 * d_um * k, 0.5 * d_um * k / rng.uniform(1.0, 1.5), rng.uniform(0, np.pi),
            base_od=rng.uniform(0.3, 0.45) if vesicular else rng.uniform(0.6, 0.9),
            rim_od=0.4 if vesicular else 0.2, speckle_od=0.14, irregular=rng.uniform(0.03, 0.09),
            nucleoli=int(rng.choice([0, 1, 1, 2])) if vesicular else int(rng.random() < 0.25), k=k))
    for _ in range(24):
        r_um = rng.uniform(2.8, 3.8)
        groups["lymph"].append(_nucleus(
            rng, r_um * k, r_um * k / rng.uniform(1.0, 1.15), rng.uniform(0, np.pi), base_od=rng.uniform(0.85, 1.15),
            rim_od=0.1, speckle_od=0.1, irregular=0.03, k=k))
    for i in range(_N_ORIENT * 3):
        angle = (i % _N_ORIENT) * np.pi / _N_ORIENT
        groups["spindle"].append(_nucleus(
            rng, rng.uniform(6.0, 10.0) * k, rng.uniform(1.1, 1.6) * k, angle, base_od=rng.uniform(0.85, 1.15),
            rim_od=0.1, speckle_od=0.08, irregular=0.04, bend=rng.uniform(-0.25, 0.25), k=k))
    for _ in range(24):
        r_um = rng.uniform(0.8, 2.2)
        groups["debris"].append(_nucleus(
            rng, r_um * k, r_um * k / rng.uniform(1.0, 1.8), rng.uniform(0, np.pi), base_od=rng.uniform(1.0, 1.5),
            rim_od=0.0, speckle_od=0.1, irregular=0.2, k=k))
    trans: list[np.ndarray] = []
    start, count = {}, {}
    for name, sprites in groups.items():
        start[name], count[name] = len(trans), len(sprites)
        trans.extend(sprites)
    half = np.array([(t.shape[0] // 2, t.shape[1] // 2) for t in trans])
    return _Sprites(tuple(trans), half, start, count)


# ---------------------------------------------------------------- nucleus placement
# kind, mean spacing (µm) of the jittered grid, keep-probability per render label 0..TLS (glass, tumour, stroma,
# lymphocytes, fat, necrosis, septum, infiltrated tumour, lymphoid aggregate)
_PLACEMENT = (
    ("tumour", 13.0, (0.0, 0.97, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.22)),
    ("lymph", 7.2, (0.0, 0.03, 0.015, 0.95, 0.0, 0.02, 0.04, 0.45, 1.0)),
    ("spindle", 32.0, (0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0)),
    ("debris", 9.0, (0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0)),
)


class Renderer:
    """Renders level-0 rows of one synthetic slide; holds its render labels at 1/`RENDER_DOWNSAMPLE`."""

    def __init__(self, layout: Layout, seed: int, padded_width_px: int, padded_height_px: int):
        self.layout = layout
        self.seed = seed
        self.width_px = padded_width_px
        size = _TEXTURE_PX[int(max(padded_width_px, padded_height_px) > 8192)]
        self.textures = _textures(seed, layout.mpp, size)
        rng = np.random.default_rng([seed, 606])
        self._warp_x = [_warp_1d(rng, padded_width_px, layout.mpp) for _ in range(2)]  # u += a(x), v += c(x)
        self._warp_y = [_warp_1d(rng, padded_height_px, layout.mpp) for _ in range(2)]  # u += b(y), v += d(y)
        self.sprites = _sprites(seed, layout.mpp)
        q = RENDER_DOWNSAMPLE
        self.labels_q = render_labels(layout, padded_height_px, padded_width_px, q)
        self._bands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _band(self, band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nuclei (x, y, sprite id) whose jitter cell starts in level-0 rows [band, band + 1) * `_BAND_PX`."""
        if band not in self._bands:
            rng = np.random.default_rng([self.seed, 404, band])
            q, mpp = RENDER_DOWNSAMPLE, self.layout.mpp
            hq, wq = self.labels_q.shape
            xs, ys, ids = [], [], []
            for kind, spacing_um, keep_p in _PLACEMENT:
                s = spacing_um / mpp
                rows = np.arange(np.ceil(band * _BAND_PX / s), np.ceil((band + 1) * _BAND_PX / s))
                cols = np.arange(np.ceil(self.width_px / s))
                gy, gx = np.meshgrid(rows, cols, indexing="ij")
                y = ((gy + rng.random(gy.shape)) * s).astype(np.int64).ravel()
                x = ((gx + rng.random(gx.shape)) * s).astype(np.int64).ravel()
                lab = self.labels_q[np.clip(y // q, 0, hq - 1), np.clip(x // q, 0, wq - 1)]
                keep = rng.random(x.shape) < np.asarray(keep_p)[lab]
                x, y = x[keep], y[keep]
                start, count = self.sprites.kind_start[kind], self.sprites.kind_count[kind]
                if kind == "spindle":
                    o = np.round(self._fibre_angle(x, y) / (np.pi / _N_ORIENT)).astype(np.int64) % _N_ORIENT
                    sid = start + o + _N_ORIENT * rng.integers(0, count // _N_ORIENT, size=x.shape)
                else:
                    sid = start + rng.integers(0, count, size=x.shape)
                xs.append(x)
                ys.append(y)
                ids.append(sid)
            self._bands[band] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(ids))
        return self._bands[band]

    def _fibre_angle(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Collagen direction (radians) in level-0 space at integer px `x`, `y`, through the texture warps."""
        t = self.textures
        (a, da), (c, dc) = self._warp_x
        (b, db), (d, dd) = self._warp_y
        xc = np.clip(x, 0, self.width_px - 1)
        yc = np.clip(y, 0, len(b) - 1)
        u = (x + a[xc] + b[yc]) & (t.size - 1)
        v = (y + c[xc] + d[yc]) & (t.size - 1)
        angle = t.orient[v, u]
        tx, ty = np.cos(angle), np.sin(angle)
        # texture coords (u, v) = (x + a(x) + b(y), y + c(x) + d(y)); a direction t there is J^-1 t here
        jxx, jxy, jyx, jyy = 1 + da[xc], db[yc], dc[xc], 1 + dd[yc]
        return np.arctan2(jxx * ty - jyx * tx, jyy * tx - jxy * ty)

    def rows(self, y0_px: int, height_px: int) -> np.ndarray:
        """Level-0 pixels of rows [y0_px, y0_px + height_px) over the padded width: (h, w, 4) uint8 RGBA.

        `y0_px` and `height_px` are multiples of `RENDER_DOWNSAMPLE`.
        """
        q, t = RENDER_DOWNSAMPLE, self.textures
        lab = self.labels_q[y0_px // q:(y0_px + height_px) // q]
        lab = np.repeat(np.repeat(lab, q, axis=0), q, axis=1)[:, :self.width_px]
        mask = np.int32(t.size - 1)
        (a, _), (c, _) = self._warp_x
        b, d = self._warp_y[0][0][y0_px:y0_px + height_px], self._warp_y[1][0][y0_px:y0_px + height_px]
        x = np.arange(self.width_px, dtype=np.int32)
        y = np.arange(y0_px, y0_px + height_px, dtype=np.int32)
        v = (y + d)[:, None] + c[None, :]
        v &= mask
        v *= np.int32(t.size)
        u = (x + a)[None, :] + b[:, None]
        u &= mask
        idx = lab.astype(np.int32) * np.int32(t.size * t.size)
        idx += v
        idx += u
        out = t.rgba[idx].view(np.uint8).reshape(height_px, self.width_px, 4)
        self._stamp(out, y0_px)
        return out

    def _stamp(self, out: np.ndarray, y0_px: int) -> None:
        """Multiply the nuclei overlapping these rows into `out` (Beer–Lambert: transmittances multiply)."""
        h, w = out.shape[:2]
        margin = int(self.sprites.half.max()) + 1
        first = max(0, (y0_px - margin - _BAND_PX) // _BAND_PX)
        last = (y0_px + h + margin) // _BAND_PX
        for band in [b for b in self._bands if b < first]:
            del self._bands[band]
        trans, half = self.sprites.trans, self.sprites.half
        for band in range(first, last + 1):
            xs, ys, ids = self._band(band)
            near = (ys >= y0_px - margin) & (ys < y0_px + h + margin)
            for x, y, sid in zip(xs[near].tolist(), (ys[near] - y0_px).tolist(), ids[near].tolist()):
                sprite = trans[sid]
                hy, hx = half[sid]
                top, left = y - hy, x - hx
                a, b = max(top, 0), min(top + sprite.shape[0], h)
                c, d = max(left, 0), min(left + sprite.shape[1], w)
                if a >= b or c >= d:
                    continue
                region = out[a:b, c:d]
                mixed = region * sprite[a - top:b - top, c - left:d - left]
                mixed >>= 8
                region[...] = mixed
