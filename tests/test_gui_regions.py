"""GUI: CARE's regions and ROI as napari layers, aligned with the slide layer in µm."""

from __future__ import annotations

import numpy as np

from care_core.features import PatchFeatures
from care_core.model import CARE
from napari_care._layers import region_layers

MPP = 0.5
STEP = 512  # level-0 px per patch


def _encoding():
    rng = np.random.default_rng(0)
    cols, rows = np.meshgrid(np.arange(3, 21), np.arange(2, 14))
    coords = np.stack([cols.ravel(), rows.ravel()], axis=1) * STEP + 100  # grid not at the slide origin
    feats = PatchFeatures(rng.normal(size=(len(coords), 16)).astype(np.float32), coords, STEP, mpp=MPP, patch_px=512)
    model = CARE.from_seed(0, input_dim=16, embed_dim=32, heads=2, spf_dim=16)
    return model.encode(feats)


def test_region_layers_align_with_slide(make_napari_viewer):
    enc = _encoding()
    viewer = make_napari_viewer()
    (labels_data, labels_kw, _), (roi_data, roi_kw, _) = region_layers(enc, MPP)
    labels = viewer.add_labels(labels_data, **labels_kw)
    roi = viewer.add_shapes(roi_data, **roi_kw)
    assert labels.data.shape == (12, 18)
    assert labels.data.max() == enc.n_regions and labels.data.min() == 1  # every cell of the full grid has a region
    # the centre of each patch, in world µm, lands on its own region's label
    centres_um = (enc.coords + STEP / 2 - 0.5) * MPP  # (x, y)
    for (x, y), region in zip(centres_um[::7], enc.patch_region[::7]):
        assert labels.get_value((y, x), world=True) == region + 1
    # the table row of label i is region i - 1; the ROI row is flagged
    table = labels.features
    assert list(table["id"][1:]) == list(range(enc.n_regions))
    assert bool(table["is_roi"][enc.roi + 1]) and table["is_roi"].sum() == 1
    np.testing.assert_allclose(table["pi"][1:].sum(), 1.0, atol=1e-5)
    # the ROI outline encloses the ROI's patch centres
    from matplotlib.path import Path as MplPath

    inside = np.zeros(len(enc.coords), bool)
    for outline in roi.data:
        inside |= MplPath(outline[:, ::-1]).contains_points(centres_um)
    np.testing.assert_array_equal(inside, enc.patch_region == enc.roi)
