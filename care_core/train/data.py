"""Stage I data: the sub-WSI dataset (reads only its patch rows from each `.h5`) and the views of a sub-WSI
(global and local crops of the feature grid, each flipped/rotated, thinned, augmented and, for the
student's global views, block-masked).

Determinism: every random choice comes from the `np.random.Generator` the caller passes; `sample_rng`
gives one per (run seed, epoch, sample), so a resumed run draws the same views.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np

from care_core.errors import TrainingConfigError
from care_core.train.augment import brightness, contrast, flip_rotate, patch_dropout, posterize
from care_core.train.masking import view_mask
from care_core.train.subwsi import SubWSIIndex

__all__ = ["SubWSIDataset", "ViewConfig", "Views", "make_views", "check_view_config", "sample_rng"]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's views: a function of (run seed, epoch, sample index) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class SubWSIDataset:
    """Sub-WSIs of a `SubWSIIndex` as (features float32 [n, D], grid int64 [n, 2] (col, row)).

    Each item reads only its rows from its slide's `.h5` (sorted fancy indexing). Files are opened lazily,
    per process (workers forked or spawned by a DataLoader open their own), at most `max_open_files` at
    once; a file whose size/mtime changed since indexing raises TrainingConfigError when opened.
    seed: the run seed, for `rng(i, epoch)`.
    """

    def __init__(self, index: SubWSIIndex, *, seed: int = 0, max_open_files: int = 64) -> None:
        self.index = index
        self.seed = int(seed)
        self.max_open_files = int(max_open_files)
        self._files: OrderedDict = OrderedDict()
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    def rng(self, i: int, epoch: int) -> np.random.Generator:
        """The generator for sample i's views in `epoch` (see `sample_rng`)."""
        return sample_rng(self.seed, epoch, i)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.index.patches(i)
        s = self.index.slide_of(i)
        f = self._open(s)
        ds = f["features"]
        features = (ds[0, rows] if ds.ndim == 3 else ds[rows]).astype(np.float32, copy=False)
        coords = np.rint(f["coords"][rows]).astype(np.int64)  # as load_features reads float coords
        step = int(self.index.slide_step[s])
        grid = np.rint((coords - self.index.slide_origin[s]) / step).astype(np.int64)
        return features, grid

    def _open(self, s: int):
        import h5py

        if self._pid != os.getpid():  # inherited handles belong to the parent: start afresh
            self._files, self._pid = OrderedDict(), os.getpid()
        if s in self._files:
            self._files.move_to_end(s)
            return self._files[s]
        self.index.check_slide(s)
        while len(self._files) >= self.max_open_files:
            self._files.popitem(last=False)[1].close()
        f = self._files[s] = h5py.File(self.index.slide_paths[s], "r")
        return f

    def close(self) -> None:
        """Close this process's open feature files."""
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._pid = OrderedDict(), None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": OrderedDict(), "_pid": None}


@dataclass(frozen=True)
class ViewConfig:
    """Views of one sub-WSI (sizes in grid cells; probabilities in [0, 1]; ranges are (low, high))."""

    n_global: int = 2  # global crops: teacher and student both see them
    n_local: int = 6  # local crops: student only
    global_size: tuple[int, int] = (14, 20)  # side of a global crop window, drawn per axis
    local_size: tuple[int, int] = (6, 10)  # side of a local crop window, drawn per axis
    global_min_patches: int = 32  # a window is redrawn until it holds this many patches
    local_min_patches: int = 8
    max_tries: int = 20  # windows drawn before taking the fullest one seen
    flip_prob: float = 0.5  # per axis
    rotate: bool = True  # a uniform number of 90° turns
    dropout_prob: float = 0.5  # a view loses a share of its patches ...
    dropout_ratio: tuple[float, float] = (0.05, 0.2)  # ... drawn from this range
    brightness_prob: float = 0.8  # channel-wise scale drawn from 1 ± strength
    brightness_strength: float = 0.2
    contrast_prob: float = 0.8  # one factor from 1 ± strength around the channel means
    contrast_strength: float = 0.2
    posterize_prob: float = 0.2  # quantise each channel to a number of levels drawn from the range
    posterize_levels: tuple[int, int] = (4, 16)
    mask_prob: float = 0.5  # a global view is block-masked for the student (iBOT: 0.5) ...
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # ... with a ratio drawn from this range

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from YAML/TOML
                object.__setattr__(self, f.name, value := tuple(value))
            if f.name.endswith("_prob") and not 0 <= value <= 1:
                raise TrainingConfigError(f"{f.name}={value} must be a probability in [0, 1]")
            if isinstance(f.default, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise TrainingConfigError(f"{f.name}={value} must be a range (low, high) with low <= high")
        c = self
        checks = [
            (c.n_global >= 1 and c.n_local >= 0, f"n_global={c.n_global} >= 1 and n_local={c.n_local} >= 0"),
            (c.global_size[0] >= 1 and c.local_size[0] >= 1, f"crop sides {c.global_size}, {c.local_size} >= 1"),
            (c.global_min_patches >= 1 and c.local_min_patches >= 1, "global/local_min_patches >= 1"),
            (c.global_min_patches <= c.global_size[1] ** 2,
             f"global_min_patches={c.global_min_patches} <= global_size[1]**2={c.global_size[1] ** 2}"),
            (c.local_min_patches <= c.local_size[1] ** 2,
             f"local_min_patches={c.local_min_patches} <= local_size[1]**2={c.local_size[1] ** 2}"),
            (c.max_tries >= 1, f"max_tries={c.max_tries} >= 1"),
            (0 <= c.dropout_ratio[0] and c.dropout_ratio[1] < 1, f"dropout_ratio={c.dropout_ratio} within [0, 1)"),
            (0 <= c.brightness_strength < 1, f"brightness_strength={c.brightness_strength} within [0, 1)"),
            (0 <= c.contrast_strength < 1, f"contrast_strength={c.contrast_strength} within [0, 1)"),
            (c.posterize_levels[0] >= 2, f"posterize_levels={c.posterize_levels} of at least 2"),
            (0 <= c.mask_ratio[0] and c.mask_ratio[1] < 1, f"mask_ratio={c.mask_ratio} within [0, 1)"),
        ]
        for ok, need in checks:
            if not ok:
                raise TrainingConfigError(f"impossible view config: need {need}")


def check_view_config(cfg: ViewConfig, index: SubWSIIndex) -> None:
    """TrainingConfigError when no sub-WSI of `index` allows a real global crop: every sub-WSI fits inside
    the smallest global window, or has fewer than `global_min_patches` patches."""
    smallest = cfg.global_size[0]
    if not np.any(index.extent.max(axis=1) > smallest):
        raise TrainingConfigError(
            f"{index.path}: every sub-WSI fits in a {smallest}x{smallest} global crop (largest extent "
            f"{int(index.extent.max())} cells), so global crops are whole sub-WSIs; lower global_size"
        )
    if not np.any(index.sizes >= cfg.global_min_patches):
        raise TrainingConfigError(
            f"{index.path}: no sub-WSI has global_min_patches={cfg.global_min_patches} patches (largest "
            f"{int(index.sizes.max())}); lower global_min_patches"
        )


@dataclass
class Views:
    """Views of one sub-WSI, global ones first. Per view v: features[v] float32 [n_v, D], grids[v] int64
    [n_v, 2] (col, row, each axis from 0), rows[v] int64 [n_v] (its patches' positions in the sub-WSI),
    masks[v] bool [n_v] (the student's masked tokens; all False for local views)."""

    features: list[np.ndarray]
    grids: list[np.ndarray]
    rows: list[np.ndarray]
    masks: list[np.ndarray]
    n_global: int
    geometries: list | None = None  # CARE geometry of each view, when the data pipeline computes it

    def __len__(self) -> int:
        return len(self.features)


def crop(grid: np.ndarray, size: tuple[int, int], min_patches: int, max_tries: int,
         rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of the patches inside a random axis-aligned window of grid [n, 2].

    Each side is drawn from `size`; the window holds a random patch and lies within the grid's bounding box
    where it fits (a window larger than the sub-WSI holds all of it). Windows are redrawn until one holds
    `min_patches` patches, at most `max_tries` times; then the fullest one is taken.
    """
    lo, hi = grid.min(axis=0), grid.max(axis=0)
    best = np.arange(0)
    for _ in range(max_tries):
        side = rng.integers(size[0], size[1] + 1, size=2)
        anchor = grid[rng.integers(len(grid))]
        start_hi = np.minimum(anchor, hi - side + 1)
        start_lo = np.maximum(lo, anchor - side + 1)
        start = np.where(start_hi >= start_lo, rng.integers(start_lo, np.maximum(start_hi, start_lo) + 1), lo)
        rows = np.flatnonzero(np.all((grid >= start) & (grid < start + side), axis=1))
        if len(rows) > len(best):
            best = rows
        if len(best) >= min_patches:
            break
    return best


def _one_view(features: np.ndarray, grid: np.ndarray, rows: np.ndarray, cfg: ViewConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if rng.random() < cfg.dropout_prob:
        rows = rows[patch_dropout(len(rows), rng.uniform(*cfg.dropout_ratio), rng)]
    flips = rng.random(2) < cfg.flip_prob
    turns = int(rng.integers(4)) if cfg.rotate else 0
    g = flip_rotate(grid[rows], flip_x=bool(flips[0]), flip_y=bool(flips[1]), quarter_turns=turns)
    x = features[rows]
    if rng.random() < cfg.brightness_prob:
        s = cfg.brightness_strength
        x = brightness(x, rng.uniform(1 - s, 1 + s, size=x.shape[1]))
    if rng.random() < cfg.contrast_prob:
        s = cfg.contrast_strength
        x = contrast(x, rng.uniform(1 - s, 1 + s))
    if rng.random() < cfg.posterize_prob:
        x = posterize(x, int(rng.integers(cfg.posterize_levels[0], cfg.posterize_levels[1] + 1)))
    return np.ascontiguousarray(x, dtype=np.float32), g, rows


def make_views(features: np.ndarray, grid: np.ndarray, cfg: ViewConfig, rng: np.random.Generator) -> Views:
    """`cfg.n_global` global then `cfg.n_local` local views of one sub-WSI (features [n, D], grid [n, 2]).

    Per view: crop, patch dropout, flips / 90° turns of the grid, brightness, contrast, posterize; global
    views also get the student's block mask. Uses only `rng`: the same generator state gives the same views.
    """
    features = np.asarray(features, dtype=np.float32)
    grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    if not len(grid) or len(grid) != len(features):
        raise ValueError(f"features {features.shape} and grid {grid.shape}: need n >= 1 rows of each")
    out = Views([], [], [], [], cfg.n_global)
    for v in range(cfg.n_global + cfg.n_local):
        is_global = v < cfg.n_global
        size, min_patches = ((cfg.global_size, cfg.global_min_patches) if is_global
                             else (cfg.local_size, cfg.local_min_patches))
        rows = crop(grid, size, min_patches, cfg.max_tries, rng)
        x, g, rows = _one_view(features, grid, rows, cfg, rng)
        mask = (view_mask(g, rng, prob=cfg.mask_prob, ratio_range=cfg.mask_ratio) if is_global
                else np.zeros(len(g), dtype=bool))
        for lst, item in zip((out.features, out.grids, out.rows, out.masks), (x, g, rows, mask)):
            lst.append(item)
    return out
