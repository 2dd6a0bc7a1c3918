"""GUI: the CARE dock widget runs the pipeline in a worker thread (progress, cancel, errors, cache) and shows the
result as layers aligned with the slide."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from slide_factory import tissue_image, write_generic_pyramid

from napari_care._widget import UNTRAINED, CareWidget

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 256 px")


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch):
    """One result cache for this module's tests: the first run computes, later runs of the same settings read it."""
    path = tmp_path_factory.getbasetemp() / "gui_cache"
    monkeypatch.setenv("NAPARI_CARE_CACHE", str(path))
    return path


@pytest.fixture
def viewer_with_slide(make_napari_viewer, small_sample, cache_dir):
    viewer = make_napari_viewer()
    viewer.open(str(small_sample.slide_path), plugin="napari-care")
    return viewer


def _widget(viewer) -> CareWidget:
    widget = CareWidget(viewer)
    widget.checkpoint.value = UNTRAINED  # the demo checkpoint may be installed; these tests pin the model
    widget.patch_px.value = 256
    return widget


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.busy(), timeout=timeout)


def test_widget_is_in_the_manifest():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert [w.display_name for w in pm.get_manifest("napari-care").contributions.widgets] == ["CARE regions", "Train CARE"]


def test_run_shows_aligned_layers_stays_responsive_and_is_cached(viewer_with_slide, qtbot, cache_dir):
    from qtpy.QtCore import QTimer

    viewer = viewer_with_slide
    widget = _widget(viewer)
    widget.clear_cache()
    slide_layer = viewer.layers[0]
    assert widget.slide.value is slide_layer and widget.slide_mpp.value == pytest.approx(0.5)
    # the longest gap between ticks of a 10 ms timer while the run is in flight: how long the UI froze
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()  # returned at once
    _wait(qtbot, widget)
    timer.stop()
    stall_ms = 1000 * np.diff(ticks).max()
    print(f"longest UI stall during a cold run: {stall_ms:.0f} ms over {len(ticks)} ticks")
    assert stall_ms < 3000  # generous (2 shared cores): the goal is < 100 ms; bench/bench_gui.py measures it
    names = [layer.name for layer in viewer.layers]
    assert names == ["small", "small tissue", "small π", "small regions", "small ROI"]
    assert not viewer.layers["small tissue"].visible and not viewer.layers["small π"].visible
    regions = viewer.layers["small regions"]
    enc = widget.result.encoding
    assert regions.data.max() == enc.n_regions >= 1
    assert widget.status.text().startswith(f"{enc.n_regions} regions; ROI = region {enc.roi} (untrained (seed 0), in ")
    assert widget.progress.value() == widget.progress.maximum()
    # a known patch's label lies under its level-0 coordinate (world µm = level-0 px × mpp)
    for (x, y), region in list(zip(enc.coords, enc.patch_region))[::5]:
        for dx, dy in ((0, 0), (255, 255), (128, 3)):
            assert regions.get_value(((y + dy) * 0.5, (x + dx) * 0.5), world=True) == region + 1
    assert regions.colormap.map(np.array([enc.roi + 1]))[0, :3].tolist() != [1.0, 215 / 255, 0.0]
    # the ROI outline is a few screen px wide, at any zoom
    roi = viewer.layers["small ROI"]
    cam = viewer.scene.camera
    assert roi.edge_width[0] * cam.zoom == pytest.approx(3.0)
    cam.zoom *= 4
    assert roi.edge_width[0] * cam.zoom == pytest.approx(3.0)
    assert viewer.canvas.overlays.scale_bar.visible
    # running again reads the cache and replaces the layers instead of piling them up
    assert widget.cache_label.text().startswith(f"cache: {cache_dir / 'results'} (")
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.result.cached and widget.status.text().endswith("from the cache)")
    assert [layer.name for layer in viewer.layers] == names


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
    widget = _widget(viewer)
    widget.min_tissue.value = 0.3  # settings no other test caches
    cached_before = sorted(widget.cache.root.rglob("*")) if widget.cache.root.exists() else []
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.status.text().startswith("patch features"), timeout=60_000)
    assert widget.progress.value() >= 1
    widget.cancel_button.click()
    cancel_pressed.set()
    _wait(qtbot, widget, 60_000)
    assert widget.status.text() == "cancelled"
    assert widget.progress.value() == 0  # the bar does not stay where it stopped
    assert closed == [True]  # the extraction generator was closed (readers stopped) in the worker thread
    assert len(viewer.layers) == 1 and widget.run_button.isEnabled()
    cached_after = sorted(widget.cache.root.rglob("*")) if widget.cache.root.exists() else []
    assert cached_after == cached_before  # nothing cached, nothing half-written


def test_bad_checkpoint_is_reported_on_the_widget_only(viewer_with_slide, qtbot, tmp_path):
    from napari_care._widget import FILE

    viewer = viewer_with_slide
    widget = _widget(viewer)
    widget.checkpoint.value = FILE
    widget.model.value = tmp_path / "missing.safetensors"
    with qtbot.captureExceptions() as caught:
        widget.run_button.click()
        _wait(qtbot, widget, 60_000)
    assert caught == []  # the worker's error handler handles it; nothing is raised again on the Qt thread
    assert widget.status.text().startswith("error: checkpoint metadata") and "missing.json" in widget.status.text()
    assert widget.status.text().endswith("choose another file in 'CARE checkpoint', or 'untrained'")
    assert len(viewer.layers) == 1


def test_slide_without_mpp_is_fixed_from_the_window(make_napari_viewer, qtbot, tmp_path, cache_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = write_generic_pyramid(tmp_path / "nompp.tif", tissue_image(1536, 1024, [(760, 500, 420)], seed=3),
                                     n_levels=2, mpp=None)
        viewer = make_napari_viewer()
        viewer.open(str(path), plugin="napari-care")
    widget = _widget(viewer)
    widget.status.setText("x" * 2000)  # a long message wraps; the dock does not grow
    assert widget.sizeHint().width() < 600 and widget.status.wordWrap()
    assert widget.slide_mpp.value == 0.0
    widget.run_button.click()
    _wait(qtbot, widget, 60_000)
    text = widget.status.text()
    assert "records no pixel size" in text and "'slide µm/px'" in text and "--mpp" not in text and "mpp=" not in text
    widget.slide_mpp.value = 0.5
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.status.text().split(";")[0].endswith("regions")
    np.testing.assert_allclose(viewer.layers["nompp"].scale, (0.5, 0.5))  # the slide now sits in µm, with its regions


def test_no_slide_open(make_napari_viewer, cache_dir):
    widget = CareWidget(make_napari_viewer())
    widget.run_button.click()
    assert widget.status.text().startswith("open a slide first")


def test_every_message_names_a_control_of_the_window():
    from care_core import errors
    from napari_care._widget import gui_message

    cases = {
        errors.InvalidInputError("s.svs: a 512 px patch ... does not fit the 300x300 px slide; use a smaller patch_px or "
                                 "a finer target_mpp"): "s.svs: a 512 px patch ... does not fit the 300x300 px slide; "
                                                        "change 'patch size px' or 'patch µm/px' (0 = automatic)",
        errors.InvalidInputError("device='cuda' but this machine has no CUDA GPU; choose device 'auto' or 'cpu'"):
            "device='cuda' but this machine has no CUDA GPU; choose device 'auto' or 'cpu'",
        errors.HeadError("head 'x' expects features of patch encoder 'uni_v2' but these come from 'stain-texture'; "
                         "re-extract"): "head 'x' expects features of patch encoder 'uni_v2' but these come from "
                                        "'stain-texture'; choose heads trained for this checkpoint and encoder in "
                                        "'prediction heads', or none",
    }
    for exc, shown in cases.items():
        assert gui_message(exc) == shown


def test_the_demo_checkpoint_comes_with_its_heads_and_a_click_shows_their_predictions(viewer_with_slide, qtbot):
    """Out of the box (no flag, no file chosen): the demo checkpoint and the demo heads; a region's details name its
    predicted compartment. Leaving the demo checkpoint drops its heads (they fit its regions only); coming back
    lists them again."""
    from care_core.model import DEMO_HEADS
    from napari_care._widget import DEMO

    widget = CareWidget(viewer_with_slide)
    demo_heads = [h.with_suffix(".safetensors") for h in DEMO_HEADS]
    assert widget.checkpoint.value == DEMO and widget.head_paths() == demo_heads
    widget.run_button.click()
    _wait(qtbot, widget)
    enc = widget.result.encoding
    assert [p.head for p in enc.predictions] == ["care_demo_compartments", "care_demo_tls_signature"]
    widget.select_region(int(enc.roi))
    details = widget.inspector.details.text()
    classes = enc.predictions[0].classes
    assert any(c in details for c in classes) and "region classifier" in details
    widget.checkpoint.value = UNTRAINED
    assert widget.head_paths() == []
    widget.checkpoint.value = DEMO
    assert widget.head_paths() == demo_heads
