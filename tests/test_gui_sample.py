"""GUI: the sample-data entry opens the synthetic slide and its ground-truth compartments in napari."""

from __future__ import annotations

import numpy as np
import pytest


def test_sample_data_opens_slide_and_compartments(make_napari_viewer, tmp_path, monkeypatch):
    import napari_care._sample_data as sample_data

    monkeypatch.setenv("NAPARI_CARE_CACHE", str(tmp_path))
    monkeypatch.setattr(sample_data, "SAMPLE_SIZE_PX", (2048, 1536))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-care", "synthetic_he")
    image, labels = layers
    assert image.multiscale and image.rgb
    assert tuple(image.data[0].shape) == (1536, 2048, 3)
    np.testing.assert_allclose(image.scale, (0.5, 0.5))
    assert labels.data.shape == (96, 128)
    np.testing.assert_allclose(labels.scale, (8.0, 8.0))  # 16 level-0 px of 0.5 µm each
    np.testing.assert_allclose(labels.translate, (3.75, 3.75))  # centre of level-0 px 0..15, as the image places it
    assert set(np.unique(labels.data)) >= {0, 1, 2, 3, 4}
    assert labels.metadata["compartments"][1] == "tumour"
    assert list(tmp_path.glob("*.svs")), "the sample is written into the cache folder"
