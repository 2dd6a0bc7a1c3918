"""Region labels from polygons and label masks: the class covering most of a region's patches."""

from __future__ import annotations

import numpy as np
from shapely.geometry import box

from care_core.evaluate import patch_labels_from_polygons, region_labels, region_labels_from_mask, region_labels_from_polygons
from care_core.model.encoding import SlideEncoding


def _encoding() -> SlideEncoding:
    """A 4 x 2 grid of 100-px patches; region 0 = left two columns, region 1 = right two columns."""
    cols, rows = np.meshgrid(np.arange(4), np.arange(2))
    coords = np.stack([cols.ravel(), rows.ravel()], 1) * 100
    return SlideEncoding(slide_embedding=np.zeros(2, np.float32), region_embeddings=np.zeros((2, 2), np.float32),
                         patch_region=(coords[:, 0] >= 200).astype(np.int64), pi=np.full(2, 0.5, np.float32),
                         alpha=np.full(2, 0.5, np.float32), beta=np.full(2, 0.5, np.float32), roi=0,
                         coords=coords, patch_size_level0=100)


class _Annotation:  # what care_core.regions.read_annotations returns
    def __init__(self, geometry, classification):
        self.geometry, self.classification = geometry, classification


def test_patch_centres_and_nested_polygons():
    enc = _encoding()
    # stroma covers everything; a tumour polygon inside it covers the centres (50,50) and (150,50)
    labels = patch_labels_from_polygons(enc, [(box(0, 0, 400, 200), "stroma"), (box(20, 20, 180, 80), "tumour"),
                                              _Annotation(box(0, 0, 400, 200), None)])
    assert labels.tolist() == ["tumour", "tumour", "stroma", "stroma", "stroma", "stroma", "stroma", "stroma"]


def test_majority_and_unlabelled_patches():
    enc = _encoding()
    # region 0: 3 tumour of 4 -> tumour; region 1: 1 necrosis of 4 (below half) -> unlabelled
    got = region_labels_from_polygons(enc, [(box(0, 0, 200, 200).difference(box(100, 100, 200, 200)), "tumour"),
                                            _Annotation(box(300, 100, 400, 200), "necrosis")])
    assert got.tolist() == ["tumour", None]
    assert region_labels_from_polygons(enc, [(box(300, 100, 400, 200), "necrosis")], min_fraction=0.25).tolist() == [
        None, "necrosis"]


def test_ties_are_unlabelled():
    enc = _encoding()
    labels = np.array(["a", "b", "a", "b", None, None, None, None], dtype=object)  # region 0 = patches 0,1,4,5
    assert region_labels(enc, labels, min_fraction=0.25).tolist() == [None, None]


def test_label_mask_with_downsample():
    enc = _encoding()
    mask = np.zeros((4, 8), np.uint8)  # 1/50 of level 0: each patch is 2 x 2 mask pixels
    mask[:, :4] = 1  # left half tumour
    mask[:, 4:] = 2
    mask[0:2, 6:8] = 0  # patch at (300, 0): glass
    got = region_labels_from_mask(enc, mask, 50, {1: "tumour", 2: "stroma"})
    assert got.tolist() == ["tumour", "stroma"]  # region 1: 3 of 4 stroma
