"""Region labels from annotations: pathologists label areas; each CARE region takes the class covering
most of its patches, so a region classifier can be trained on region embeddings (``care evaluate
--annotations``). A patch's class is the class at its centre: the smallest annotated polygon containing it
(nested annotations: the inner one wins), or the label-mask value there. Patches outside every polygon
(mask value 0) are unlabelled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from care_core.model.encoding import SlideEncoding

__all__ = ["patch_labels_from_polygons", "patch_labels_from_mask", "region_labels", "region_labels_from_polygons",
           "region_labels_from_mask"]


def _centres(encoding: SlideEncoding) -> np.ndarray:
    if encoding.coords is None or encoding.patch_size_level0 is None:
        raise ValueError("the encoding has no patch coords / patch_size_level0; encode the slide with CARE first")
    return np.asarray(encoding.coords, dtype=np.float64) + encoding.patch_size_level0 / 2.0


def patch_labels_from_polygons(encoding: SlideEncoding, annotations: Sequence) -> np.ndarray:
    """[N] object array: the class of each patch (None = unlabelled).

    annotations: (shapely polygon in level-0 px, class name) pairs, or objects with ``.geometry`` and
    ``.classification`` (``care_core.regions.read_annotations``); unclassified ones are skipped.
    """
    import shapely

    centres = _centres(encoding)
    pairs = [(a.geometry, a.classification) if hasattr(a, "geometry") else tuple(a) for a in annotations]
    pairs = [(g, str(c)) for g, c in pairs if c is not None and g is not None and not g.is_empty]
    labels = np.full(len(centres), None, dtype=object)
    for geom, name in sorted(pairs, key=lambda p: -p[0].area):  # large first, so smaller (inner) ones overwrite
        labels[shapely.contains_xy(geom, centres[:, 0], centres[:, 1])] = name
    return labels


def patch_labels_from_mask(encoding: SlideEncoding, mask: np.ndarray, downsample: float,
                           class_names: Mapping[int, str]) -> np.ndarray:
    """[N] object array: ``class_names[mask value]`` at each patch centre (None for 0, unknown values or outside).

    mask: [H, W] integer labels covering the slide at 1/``downsample`` of level 0.
    """
    from care_core.wsi.patches import mask_values_at_centres

    values = mask_values_at_centres(_centres(encoding) - encoding.patch_size_level0 / 2.0,
                                    encoding.patch_size_level0, mask, downsample)
    return np.array([class_names.get(int(v)) if v >= 0 else None for v in values], dtype=object)


def region_labels(encoding: SlideEncoding, patch_labels: np.ndarray, *, min_fraction: float = 0.5) -> np.ndarray:
    """[R] object array: each region's most common patch class, when it covers at least ``min_fraction``
    of the region's patches (unlabelled patches count in the total); else None. Ties give None."""
    if encoding.patch_region is None or encoding.n_regions is None:
        raise ValueError("the encoding has no regions; encode the slide with CARE first")
    out = np.full(encoding.n_regions, None, dtype=object)
    region = np.asarray(encoding.patch_region)
    sizes = np.bincount(region, minlength=encoding.n_regions)
    names = sorted({x for x in patch_labels.tolist() if x is not None})
    if not names:
        return out
    counts = np.zeros((encoding.n_regions, len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        counts[:, j] = np.bincount(region[patch_labels == name], minlength=encoding.n_regions)
    top = counts.max(axis=1)
    unique_top = (counts == top[:, None]).sum(axis=1) == 1
    ok = (top > 0) & unique_top & (top >= min_fraction * np.maximum(sizes, 1))
    out[ok] = np.array(names, dtype=object)[counts.argmax(axis=1)[ok]]
    return out


def region_labels_from_polygons(encoding: SlideEncoding, annotations: Sequence, *, min_fraction: float = 0.5) -> np.ndarray:
    """[R] class of each region from polygon annotations (see ``patch_labels_from_polygons``, ``region_labels``)."""
    return region_labels(encoding, patch_labels_from_polygons(encoding, annotations), min_fraction=min_fraction)


def region_labels_from_mask(encoding: SlideEncoding, mask: np.ndarray, downsample: float, class_names: Mapping[int, str],
                            *, min_fraction: float = 0.5) -> np.ndarray:
    """[R] class of each region from a label mask (see ``patch_labels_from_mask``, ``region_labels``)."""
    return region_labels(encoding, patch_labels_from_mask(encoding, mask, downsample, class_names), min_fraction=min_fraction)
