"""GUI: the sample-data entry opens the synthetic slide and its ground-truth compartments without freezing napari."""

from __future__ import annotations

import time

import numpy as np


def test_first_open_returns_at_once_and_the_slide_follows(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    import napari_care._sample_data as sample_data

    monkeypatch.setenv("NAPARI_CARE_CACHE", str(tmp_path))
    monkeypatch.setattr(sample_data, "SAMPLE_SIZE_PX", (2048, 1536))
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    (frame,) = viewer.open_sample("napari-care", "synthetic_he")  # the file is written in the background
    print(f"first Open Sample returned after {1000 * (time.perf_counter() - t0):.0f} ms")
    assert frame.name == "sample slide (writing…)"
    np.testing.assert_allclose(frame.data[0].max(axis=0), (768.0, 1024.0))  # where the slide will be, in µm
    qtbot.waitUntil(lambda: "sample slide" in viewer.layers, timeout=120_000)
    image, labels = viewer.layers
    assert [layer.name for layer in viewer.layers] == ["sample slide", "ground-truth compartments"]
    assert image.multiscale and image.rgb
    assert tuple(image.data[0].shape) == (1536, 2048, 3)
    np.testing.assert_allclose(image.scale, (0.5, 0.5))
    assert labels.data.shape == (96, 128)
    np.testing.assert_allclose(labels.scale, (8.0, 8.0))  # 16 level-0 px of 0.5 µm each
    np.testing.assert_allclose(labels.translate, (3.75, 3.75))  # centre of level-0 px 0..15, as the image places it
    assert set(np.unique(labels.data)) >= {0, 1, 2, 3, 4}
    assert labels.metadata["compartments"][1] == "tumour"
    assert list(tmp_path.glob("*.svs")), "the sample is written into the cache folder"
    # once written, Open Sample gives the slide itself
    again = viewer.open_sample("napari-care", "synthetic_he")
    assert [layer.name for layer in again] == ["sample slide [1]", "ground-truth compartments [1]"]
