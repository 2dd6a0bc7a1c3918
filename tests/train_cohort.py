"""Small feature cohorts and tiny configs for the training tests (seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from care_core.features import PatchFeatures

TINY_MODEL = dict(embed_dim=16, heads=2, spf_dim=8, k=4, subregion_depth=1, arsa_depth=1, mlp_ratio=2.0)


def blob(n_side: int, rng: np.random.Generator, keep: float = 0.7) -> np.ndarray:
    """(col, row) cells of an n_side² square kept by a smooth random threshold: a ragged tissue blob."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal((n_side, n_side)), 2.5)
    rows, cols = np.nonzero(field > np.quantile(field, 1 - keep))
    return np.stack([cols, rows], 1).astype(np.int64)


def write_feature_cohort(folder: Path, n_slides: int = 4, *, n_side: int = 18, dim: int = 8, seed: int = 0,
                         encoder: str = "stain-texture", slide_shift: float = 0.0) -> list[Path]:
    """Feature files whose patches belong to two 'compartments' (left / right of a wavy boundary), each
    with its own mean feature: structure a self-supervised model can pick up. slide_shift: scale of a
    random per-slide offset of every feature (a slide-level signal to align with)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    means = rng.standard_normal((2, dim)).astype(np.float32) * 2
    files = []
    for s in range(n_slides):
        grid = blob(n_side, rng)
        boundary = n_side / 2 + 2 * np.sin(grid[:, 1] / 3 + s)
        comp = (grid[:, 0] > boundary).astype(int)
        shift = rng.standard_normal(dim).astype(np.float32) * slide_shift
        feats = means[comp] + shift + rng.standard_normal((len(grid), dim)).astype(np.float32)
        files.append(PatchFeatures(features=feats, coords=grid * 256, patch_size_level0=256, mpp=0.5, patch_px=256,
                                   encoder=encoder).save(folder / f"slide{s}.h5"))
    return [Path(f) for f in files]


def write_labelled_cohort(root: Path, n_per_class: int = 5, *, n_side: int = 8, dim: int = 8) -> Path:
    """Two classes ('tumour', 'normal') of ``n_per_class`` feature grids each in ``root/features`` (named
    <class>_slide<i>.h5) and their labels table; returns ``root/labels.csv``."""
    import csv

    rows = []
    for cls, seed in (("tumour", 1), ("normal", 2)):
        for f in write_feature_cohort(root / cls, n_per_class, seed=seed, n_side=n_side, dim=dim):
            dest = root / "features" / f"{cls}_{f.stem}.h5"
            dest.parent.mkdir(exist_ok=True)
            f.rename(dest)
            rows.append((dest.stem, cls))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("slide", "label"), *rows])
    return root / "labels.csv"


def tiny_stage1(features: Path, **overrides) -> dict:
    """A Stage I config small enough for a few steps a second."""
    return {
        "features": str(features),
        "batch_size": 4,
        "epochs": 2,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "checkpoint_every": 2,
        "log_every": 1,
        "model": dict(TINY_MODEL),
        "subwsi": {"max_patches": 60, "min_patches": 12},
        "views": {"n_global": 2, "n_local": 2, "global_size": [5, 7], "local_size": [3, 4],
                  "global_min_patches": 8, "local_min_patches": 4},
        "out_dim": 32, "patch_out_dim": 32, "head_hidden": 32, "head_bottleneck": 16,
        "warmup_teacher_temp_epochs": 1.0,
        **overrides,
    }
