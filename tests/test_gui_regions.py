"""GUI: CARE's result as napari layers (regions, ROI, π, predicted class, tissue), aligned with the slide in µm."""

from __future__ import annotations

import numpy as np

from care_core.features import PatchFeatures
from care_core.model import CARE
from care_core.model.encoding import HeadPrediction
from care_core.regions import region_color
from napari_care._layers import class_color, region_layers

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
    r = enc.n_regions
    proba = np.zeros((r, 3), np.float32)
    proba[np.arange(r), np.arange(r) % 3] = 1.0  # region i is class i % 3
    enc.predictions = [HeadPrediction("tissue type", ("tumour", "stroma", "fat"), np.array([0.5, 0.3, 0.2]), proba),
                       HeadPrediction("risk head", ("risk",), np.array([0.1]), np.zeros((r, 1)))]
    mask = np.zeros((30, 40), bool)
    mask[5:10, 6:12] = True
    viewer = make_napari_viewer()
    layers = {}
    for data, kwargs, kind in region_layers(enc, MPP, name="s", tissue_mask=mask, tissue_downsample=64, zoom=2.0):
        layers[kwargs["metadata"]["care_kind"]] = getattr(viewer, f"add_{kind}")(data, **kwargs)
    assert [lyr.name for lyr in viewer.layers] == ["s tissue", "s π", "s tissue type", "s regions", "s ROI"]  # no Cox layer
    assert [lyr.visible for lyr in viewer.layers] == [False, False, False, True, True]
    for layer in viewer.layers:
        layer.visible = True  # napari reports no value under a hidden layer
    labels = layers["regions"]
    assert labels.data.shape == (12, 18)
    assert labels.data.max() == r and labels.data.min() == 1  # every cell of the full grid has a region
    # the centre of each patch, in world µm, lands on its own region's label, class and π
    centres_um = (enc.coords + STEP / 2 - 0.5) * MPP  # (x, y)
    for (x, y), region in zip(centres_um[::7], enc.patch_region[::7]):
        assert labels.get_value((y, x), world=True) == region + 1
        assert layers["class"].get_value((y, x), world=True) == region % 3 + 1
        assert layers["pi"].get_value((y, x), world=True) == enc.pi[region]
    # colours: one per region as care_core gives them, one per class as the legend shows them
    np.testing.assert_allclose(labels.colormap.map(np.array([3]))[0, :3], np.array(region_color(2)) / 255, atol=1e-6)
    np.testing.assert_allclose(layers["class"].colormap.map(np.array([2]))[0, :3], np.array(class_color(1)) / 255, atol=1e-6)
    # tissue mask pixel (row 7, col 8) covers level-0 px 448..511 x 512..575
    assert layers["tissue"].get_value((480 * MPP, 540 * MPP), world=True) == 1
    assert layers["tissue"].get_value((480 * MPP, 800 * MPP), world=True) == 0
    # the ROI outline encloses the ROI's patch centres and is 3 screen px wide at zoom 2
    from matplotlib.path import Path as MplPath

    roi = layers["roi"]
    assert roi.edge_width[0] == 1.5
    inside = np.zeros(len(enc.coords), bool)
    for outline in roi.data:
        inside ^= MplPath(outline[:, ::-1]).contains_points(centres_um)  # holes toggle back out
    np.testing.assert_array_equal(inside, enc.patch_region == enc.roi)
