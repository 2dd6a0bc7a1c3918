"""Ground truth of synthetic slides for patches and regions: each patch's compartment and local structure, and
how pure CARE's regions are against it.

A synthetic slide's mask (``<stem>_mask.tif``) holds one compartment id per ``mask_downsample`` level-0
px (0 = glass); ``<stem>_structures.tif`` one local-structure id (0 = none; ``care_core.synth.tissue.STRUCTURES``)
on the same grid. A patch takes the value under its centre (the project's one rule, as for annotations):
compartment -1 when the centre lies on glass, so the patch is left out of every count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from care_core.wsi.patches import mask_values_at_centres

__all__ = ["PatchTruth", "compartment_annotations", "patch_compartments", "patch_truth", "read_mask", "read_structures",
           "RegionPurity", "region_purity", "left_own_square"]


def patch_compartments(coords: np.ndarray, patch_size_level0: int, mask: np.ndarray, mask_downsample: int) -> np.ndarray:
    """Compartment under each patch's centre [N] int64 (-1 = glass or outside the mask).

    coords: [N, 2] level-0 (x, y) top-left corners; mask: uint8 labels at 1/``mask_downsample``.
    """
    values = mask_values_at_centres(coords, patch_size_level0, mask, mask_downsample)
    return np.where(values > 0, values, -1)


def read_mask(mask_path: str | Path) -> tuple[np.ndarray, int]:
    """(compartment labels, mask_downsample) of a synthetic slide's mask file."""
    import json

    import tifffile

    with tifffile.TiffFile(mask_path) as tif:
        meta = json.loads(tif.pages[0].description)
        return tif.pages[0].asarray(), int(meta["mask_downsample"])


def read_structures(mask_path: str | Path) -> np.ndarray:
    """Local-structure ids beside a synthetic slide's mask file (all 0 for a slide written before structures)."""
    import tifffile

    from care_core.synth.svs import structures_path

    path = structures_path(mask_path)
    return tifffile.imread(path) if path.is_file() else np.zeros(read_mask(mask_path)[0].shape, np.uint8)


@dataclass(frozen=True)
class PatchTruth:
    """Per-patch ground truth of one slide: compartment [N] (-1 = glass) and structure [N] (0 = none)."""

    compartment: np.ndarray
    structure: np.ndarray


def patch_truth(coords: np.ndarray, patch_size_level0: int, mask_path: str | Path) -> PatchTruth:
    """Compartment and local structure under each patch's centre, from a synthetic slide's mask file."""
    mask, ds = read_mask(mask_path)
    structure = mask_values_at_centres(coords, patch_size_level0, read_structures(mask_path), ds)
    return PatchTruth(patch_compartments(coords, patch_size_level0, mask, ds), np.maximum(structure, 0))


def compartment_annotations(mask: np.ndarray, mask_downsample: int, *, min_area_px: int = 4) -> list:
    """The compartments of a mask as a pathologist's outlines: one classified polygon (level-0 px) per connected
    area of at least `min_area_px` mask px (its outer boundary; an area inside it is a smaller polygon of its own,
    and the smallest polygon containing a point names its class)."""
    import shapely
    from skimage import measure

    from care_core.regions.shapes import Annotation
    from care_core.synth.tissue import COMPARTMENTS

    out = []
    for value, name in COMPARTMENTS.items():
        areas = measure.label(mask == value, connectivity=1)
        for prop in measure.regionprops(areas):
            if prop.area < min_area_px:
                continue
            r0, c0, r1, c1 = prop.bbox
            padded = np.pad(prop.image, 1)
            ring = max(measure.find_contours(padded.astype(np.uint8), 0.5), key=len)
            xy = np.stack([ring[:, 1] + c0 - 1 + 0.5, ring[:, 0] + r0 - 1 + 0.5], axis=1) * mask_downsample
            poly = shapely.make_valid(shapely.Polygon(xy))
            if not poly.is_empty and poly.area > 0:
                out.append(Annotation(poly, name))
    return out


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
