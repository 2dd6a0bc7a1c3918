"""Ground truth of synthetic slides for patches and regions: each patch's compartment, and how pure
CARE's regions are against it.

A synthetic slide's mask (``<stem>_mask.tif``) holds one compartment id per ``mask_downsample`` level-0
px (0 = glass). A patch's compartment is the most common tissue id inside its level-0 square (glass
ignored; -1 when the square holds no tissue).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["patch_compartments", "RegionPurity", "region_purity", "left_own_square"]


def patch_compartments(coords: np.ndarray, patch_size_level0: int, mask: np.ndarray, mask_downsample: int) -> np.ndarray:
    """Majority tissue compartment of each patch [N] int64 (-1 = no tissue under the patch).

    coords: [N, 2] level-0 (x, y) top-left corners; mask: uint8 labels at 1/``mask_downsample``.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n_ids = int(mask.max()) + 1
    out = np.full(len(coords), -1, dtype=np.int64)
    side = max(1, int(round(patch_size_level0 / mask_downsample)))
    for j, (x, y) in enumerate(coords // mask_downsample):
        block = mask[max(y, 0) : y + side, max(x, 0) : x + side]
        counts = np.bincount(block.ravel(), minlength=n_ids)[1:]
        if counts.sum():
            out[j] = int(counts.argmax()) + 1
    return out


def read_mask(mask_path: str | Path) -> tuple[np.ndarray, int]:
    """(labels, mask_downsample) of a synthetic slide's mask file."""
    import json

    import tifffile

    with tifffile.TiffFile(mask_path) as tif:
        meta = json.loads(tif.pages[0].description)
        return tif.asarray(), int(meta["mask_downsample"])


@dataclass(frozen=True)
class RegionPurity:
    """Size-weighted purity (share of patches in their region's majority compartment), share of regions
    at least 90 % pure, mean region size (patches) and region count; patches without tissue are left out."""

    purity: float
    share_pure90: float
    mean_size: float
    n_regions: int

    def as_dict(self) -> dict:
        return asdict(self)


def region_purity(patch_region: np.ndarray, labels: np.ndarray) -> RegionPurity:
    """Purity of a partition ``patch_region`` [N] against per-patch ``labels`` [N] (-1 = unlabelled)."""
    keep = labels >= 0
    region, lab = np.asarray(patch_region)[keep], np.asarray(labels)[keep]
    if not len(region):
        return RegionPurity(float("nan"), float("nan"), float("nan"), 0)
    _, r = np.unique(region, return_inverse=True)
    table = np.zeros((r.max() + 1, lab.max() + 1), dtype=np.int64)
    np.add.at(table, (r, lab), 1)
    sizes, majority = table.sum(1), table.max(1)
    return RegionPurity(
        purity=float(majority.sum() / sizes.sum()),
        share_pure90=float(np.mean(majority / sizes >= 0.9)),
        mean_size=float(sizes.mean()),
        n_regions=int(len(sizes)),
    )


def left_own_square(encoding) -> float:
    """Share of a SlideEncoding's patches whose region grew from another square than their own (k×k squares)."""
    k = int(encoding.meta["care_config"]["k"])
    g = encoding.grid - encoding.grid.min(0)
    sq = g // k
    n_cols = int(sq[:, 0].max()) + 1
    own = np.unique(sq[:, 1] * n_cols + sq[:, 0], return_inverse=True)[1].reshape(-1)
    return float(np.mean(encoding.region_subregion[encoding.patch_region] != own))
