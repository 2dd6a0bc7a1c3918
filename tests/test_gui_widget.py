"""GUI: the CARE dock widget runs the pipeline in a worker thread and shows regions and ROI over the slide."""

from __future__ import annotations

import numpy as np
import pytest

from napari_care._widget import CareWidget


@pytest.fixture
def viewer_with_slide(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    viewer.open(str(small_sample.slide_path), plugin="napari-care")
    return viewer


def test_widget_is_in_the_manifest():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert [w.display_name for w in pm.get_manifest("napari-care").contributions.widgets] == ["CARE regions"]


def test_run_adds_regions_and_roi_without_blocking(viewer_with_slide, qtbot):
    viewer = viewer_with_slide
    widget = CareWidget(viewer)
    slide_layer = viewer.layers[0]
    assert widget.slide.value is slide_layer
    widget.run_button.clicked.emit()
    assert not widget.run_button.enabled and widget.cancel_button.enabled  # returned at once; work is in a thread
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    assert names == ["small", "small CARE (untrained) regions", "small CARE (untrained) ROI"]
    regions = viewer.layers["small CARE (untrained) regions"]
    n_regions = regions.metadata["n_regions"]
    assert regions.data.max() == n_regions >= 1
    assert widget.status.value == f"{n_regions} regions; ROI = region {regions.metadata['roi']}"
    assert widget.progress.value == widget.progress.max
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    # the regions cover the slide's tissue: every labelled cell lies inside the slide (in µm)
    h_um, w_um = np.asarray(slide_layer.data[0].shape[:2]) * slide_layer.scale
    extent = np.asarray(regions.data.shape) * regions.scale + regions.translate
    assert (extent <= np.array([h_um, w_um]) + regions.scale).all()
    # running again replaces the layers instead of piling them up
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert len(viewer.layers) == 3


def test_bad_checkpoint_is_reported_and_adds_nothing(viewer_with_slide, qtbot, tmp_path):
    viewer = viewer_with_slide
    widget = CareWidget(viewer)
    from care_core.errors import CheckpointError

    widget.model.value = tmp_path / "missing.safetensors"
    with qtbot.captureExceptions() as caught:  # napari's worker relays the error to its notifications
        widget.run_button.clicked.emit()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert [type(exc) for _, exc, _ in caught] == [CheckpointError]
    assert widget.status.value.startswith("error: checkpoint metadata") and "missing.json" in widget.status.value
    assert len(viewer.layers) == 1


def test_no_slide_open(make_napari_viewer):
    widget = CareWidget(make_napari_viewer())
    widget.run_button.clicked.emit()
    assert widget.status.value.startswith("open a slide first")


def test_cancel_stops_the_run_and_adds_nothing(viewer_with_slide, qtbot, monkeypatch):
    import threading

    import care_core.features.extract as extract_module

    closed, cancel_pressed = [], threading.Event()
    real = extract_module.iter_extract

    def held_extract(*args, **kwargs):  # after its first batch, extraction waits until Cancel was pressed
        gen = real(*args, **{**kwargs, "batch_size": 1})
        try:
            for i, step in enumerate(gen):
                yield step
                if i == 0:
                    cancel_pressed.wait(60)
        finally:
            closed.append(True)

    monkeypatch.setattr("care_core.features.iter_extract", held_extract)
    viewer = viewer_with_slide
    widget = CareWidget(viewer)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.value.startswith("patch features"), timeout=60_000)
    widget.cancel_button.clicked.emit()
    cancel_pressed.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.value == "cancelled"
    assert closed == [True]  # the extraction generator was closed (readers stopped) in the worker thread
    assert len(viewer.layers) == 1 and widget.run_button.enabled
