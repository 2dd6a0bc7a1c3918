"""GUI: the CARE widget as a pathologist met it (issue 19): a new CARE takes only heads trained on it, the ROI
outline is drawn 3 screen px wide at every zoom, the scan's exact µm/px is shown and used, advice that works on
glass, µm kept on the scale bar when a Shapes layer is drawn, Go to ROI lands on tissue of a region in pieces,
region predictions with a 'mixed' mark and validation notes that say what they rest on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from slide_factory import tissue_image, write_generic_pyramid
from test_gui_widget import cache_dir  # noqa: F401  (one result cache for the GUI tests)

from care_core.evaluate.heads import Head
from care_core.features import get_encoder_spec
from care_core.model import CARE, save_checkpoint
from care_core.model.checkpoint import read_checkpoint_meta
from napari_care._widget import FILE, UNTRAINED, CareWidget

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 256 px")


@pytest.fixture
def viewer_with_slide(make_napari_viewer, small_sample, cache_dir):  # noqa: F811
    viewer = make_napari_viewer(show=True)
    viewer.open(str(small_sample.slide_path), plugin="napari-care")
    return viewer


def _widget(viewer) -> CareWidget:
    widget = CareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CARE regions")
    widget.checkpoint.value = UNTRAINED
    widget.patch_px.value = 256
    return widget


def _run(qtbot, widget):
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=120_000)
    assert widget.status.text().split(";")[0].endswith("regions"), widget.status.text()


@pytest.fixture(scope="module")
def two_cares(tmp_path_factory):
    """Two CARE checkpoints for stain-texture features (seeds 1 and 2), each with a region head trained on it:
    A's head calls every region 55 % tumour (mixed), B's 95 % tumour."""
    folder = tmp_path_factory.mktemp("cares")
    dim = get_encoder_spec("stain-texture").dim
    out = []
    for seed, bias in ((1, 0.2), (2, 3.0)):
        care = save_checkpoint(CARE.from_seed(seed, input_dim=dim), folder / f"care{seed}", encoder="stain-texture",
                               feature_mpp=0.5, patch_px=256)
        sha = read_checkpoint_meta(care).tensors_sha256
        width = CARE.from_seed(seed, input_dim=dim).config.embed_dim
        head = Head(name="labels_region_region_all", kind="linear", input="region", classes=("stroma", "tumour"),
                    arrays={"coef": np.zeros((2, width)), "intercept": np.array([0.0, bias])}, protocol="lr",
                    metrics={"cv": {"auroc": 1.0, "balanced_accuracy": 0.667}, "n_samples": 8}, model_sha256=sha,
                    encoder="stain-texture").save(folder / f"run{seed}" / "heads" / "labels_region_region_all")
        (folder / f"run{seed}" / "results.json").write_text('{"folds_by": "region"}')
        out.append((care, head))
    return out


def test_a_new_care_takes_only_heads_trained_on_it(viewer_with_slide, qtbot, two_cares):
    (care_a, head_a), (care_b, head_b) = two_cares
    widget = _widget(viewer_with_slide)
    widget.add_trained(care_a, head_a)
    assert widget.checkpoint.value == FILE and widget.head_paths() == [head_a]
    _run(qtbot, widget)
    widget.add_trained(care_b, head_b)  # a second job: its CARE replaces A, so A's head leaves the list
    assert widget.head_paths() == [head_b]
    _run(qtbot, widget)
    (pred,) = widget.result.encoding.predictions
    assert pred.head == "labels_region_region_all" and np.all(pred.region_proba[:, 1] > 0.9)
    assert [lyr.name for lyr in viewer_with_slide.layers if lyr.metadata.get("care_kind") == "class"] == [
        "small region classifier: stroma / tumour"]  # one class layer, updated in place
    # what the user reads: a readable title, the samples the metrics rest on, the optimism, no slide-level call
    notes = widget.heads_label.text()
    assert "region classifier: stroma / tumour" in notes and "labels_region" not in notes
    assert "(on 8 regions)" in notes and "optimistic" in notes
    summary = widget.inspector.slide_summary.text()
    assert "a class per region" in summary and "<b>tumour</b> (" not in summary
    widget.set_heads([])
    assert widget.heads_label.text() == "" and not widget.heads_label.isVisible()  # cleared heads are not listed


def test_a_region_below_the_threshold_shows_as_mixed(viewer_with_slide, qtbot, two_cares):
    (care_a, head_a), _ = two_cares
    widget = _widget(viewer_with_slide)
    widget.add_trained(care_a, head_a)
    _run(qtbot, widget)
    table = widget.inspector.table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    col = headers.index("region classifier: stroma / tumour class")
    assert {table.item(i, col).text() for i in range(table.rowCount())} == {"mixed (tumour 55%)"}
    widget.select_region(0)
    assert "<b>mixed (tumour 55%)</b>" in widget.inspector.details.text()


def _drawn_edge_px(viewer, layer, colour=None) -> float:
    """Width in screen px of the outline as napari draws it: a screenshot, the pixels of the outline's colour
    over the length of their skeleton. (Hide the other layers first; toggling a layer's visibility would
    redraw it.)"""
    from skimage.morphology import skeletonize

    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    colour = np.round(np.asarray(layer.edge_color[0][:3]) * 255).astype(int) if colour is None else np.asarray(colour)
    mask = np.abs(shot - colour).max(axis=-1) < 100
    return float(mask.sum() / max(skeletonize(mask).sum(), 1))


def test_roi_outline_is_drawn_3_screen_px_wide_at_every_zoom(viewer_with_slide, qtbot):
    viewer = viewer_with_slide
    widget = _widget(viewer)
    _run(qtbot, widget)
    roi = viewer.layers["small ROI"]
    for layer in viewer.layers:
        layer.visible = layer is roi
    assert _drawn_edge_px(viewer, roi) == pytest.approx(3.0, abs=0.8)
    viewer.camera.zoom *= 12  # towards level 0
    viewer.camera.center = roi.data[0][0]  # a point of the outline in view
    assert _drawn_edge_px(viewer, roi) == pytest.approx(3.0, abs=0.8)
    viewer.reset_view()  # Home
    assert _drawn_edge_px(viewer, roi) == pytest.approx(3.0, abs=0.8)
    roi.edge_color = [(0.0, 0.0, 0.0, 1.0)] * roi.nshapes  # only the selected region's white outline shows
    widget.select_region(0)
    viewer.camera.zoom *= 0.5
    selected = viewer.layers["small ROI"]
    assert tuple(selected.edge_color[-1]) == (1, 1, 1, 1)
    assert _drawn_edge_px(viewer, selected, colour=(255, 255, 255)) == pytest.approx(3.0, abs=0.8)


def test_a_drawn_shapes_layer_keeps_um_on_the_scale_bar(viewer_with_slide, qtbot):
    viewer = viewer_with_slide
    _widget(viewer)
    shapes = viewer.add_shapes(name="tumour")  # what napari's 'new shapes layer' button adds
    assert [str(u) for u in shapes.units] == ["micrometer", "micrometer"]
    np.testing.assert_allclose(shapes.scale, viewer.layers["small"].scale)
    assert viewer.layers.extent.units is not None  # napari uses units: the scale bar reads µm
    canvas = viewer.window._qt_viewer.canvas
    qtbot.wait(50)
    canvas._scene_canvas.update()
    qtbot.waitUntil(lambda: any("µm" in v.node.text.text or "mm" in v.node.text.text
                                for v in canvas._viewer_overlay_to_visual[viewer.canvas.overlays.scale_bar]),
                    timeout=5000)


def test_exact_um_per_px_is_shown_and_sizes_the_grid(make_napari_viewer, qtbot, tmp_path, cache_dir):  # noqa: F811
    path = write_generic_pyramid(tmp_path / "aperio.tif", tissue_image(2048, 1536, [(1000, 760, 600)], seed=4),
                                 n_levels=2, mpp=0.2525)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-care")
    widget = _widget(viewer)
    assert widget.slide_mpp.native.text().startswith("0.2525")
    widget.slide_mpp.native.lineEdit().selectAll()
    qtbot.keyClicks(widget.slide_mpp.native, "0.2525")  # typed by hand: kept to the last digit
    widget.slide_mpp.native.interpretText()
    assert widget.slide_mpp.value == 0.2525 and widget.slide_mpp_value() == 0.2525
    _run(qtbot, widget)
    assert widget.result.encoding.patch_size_level0 == round(256 * 0.5 / 0.2525) == 507  # 0.253 gives 506
    np.testing.assert_allclose(viewer.layers["aperio"].scale, (0.2525, 0.2525))


def test_glass_advice_works_where_it_is_given(make_napari_viewer, qtbot, tmp_path, cache_dir):  # noqa: F811
    """A slide of glass: the advice is not 'lower min tissue' (0 gives the same error). A slide where min tissue
    rules every patch out: lowering it, as advised, runs."""
    glass = write_generic_pyramid(tmp_path / "glass.tif", np.full((1024, 1024, 3), 245, np.uint8), n_levels=2, mpp=0.5)
    speck = write_generic_pyramid(tmp_path / "speck.tif", tissue_image(1024, 1024, [(500, 500, 150)], seed=5),
                                  n_levels=2, mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(glass), plugin="napari-care")
    viewer.open(str(speck), plugin="napari-care")
    widget = _widget(viewer)
    widget.slide.value = viewer.layers["glass"]
    widget.min_tissue.value = 0.0
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=60_000)
    text = widget.status.text()
    assert "no tissue found" in text and "open a slide that holds tissue" in text and "min tissue" not in text
    widget.slide.value = viewer.layers["speck"]
    widget.min_tissue.value = 1.0
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=60_000)
    assert "lower 'min tissue'" in widget.status.text() and "min_tissue" not in widget.status.text()
    widget.min_tissue.value = 0.0
    _run(qtbot, widget)


def test_go_to_roi_on_a_region_in_pieces_centres_on_its_tissue(make_napari_viewer):
    from care_core.model.encoding import SlideEncoding
    from care_core.pipeline import SlideResult

    grid = np.array([(c, r) for r in range(4) for c in range(10)])
    region = np.where((grid[:, 0] < 2) | (grid[:, 0] > 7), 0, 1)  # region 0: two blocks at the ends, apart
    region[(grid[:, 0] >= 3) & (grid[:, 0] <= 6)] = 1
    keep = (grid[:, 0] != 2) & (grid[:, 0] != 7)  # glass between the blocks and region 1
    grid, region = grid[keep], region[keep]
    pi = np.array([0.7, 0.3], np.float32)
    enc = SlideEncoding(slide_embedding=np.zeros(4, np.float32), region_embeddings=np.zeros((2, 4), np.float32),
                        patch_region=region, region_subregion=np.arange(2), pi=pi, alpha=pi, beta=pi, roi=0,
                        coords=grid * 512, grid=grid, patch_size_level0=512, mpp=0.5, patch_px=256, meta={})
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((2048, 5120), np.uint8), scale=(0.5, 0.5), units=("µm", "µm"),
                             metadata={"path": "pieces.tif", "mpp": 0.5}, name="pieces")
    widget = CareWidget(viewer)
    widget.show_result(slide, SlideResult(enc, np.zeros((4, 10), bool), 512.0))
    widget.inspector.roi_button.click()
    y, x = viewer.camera.center[-2:]
    centroid_x = (enc.coords[region == 0, 0].mean() + 255.5) * 0.5
    assert abs(x - centroid_x) > 256  # not the centroid, which lies in region 1
    assert widget.region_at((y, x)) == 0  # on a patch of the ROI


def test_open_time_pixel_size_warning_names_the_field(make_napari_viewer, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_generic_pyramid(tmp_path / "nompp.tif", tissue_image(1024, 1024, [(500, 500, 300)], seed=3),
                                     n_levels=2, mpp=None)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning) as caught:
        viewer.open(str(path), plugin="napari-care")
    (message,) = [str(w.message) for w in caught if "pixel size" in str(w.message)]
    assert "'slide µm/px'" in message and "mpp=" not in message and "--mpp" not in message
    assert viewer.window._qt_viewer.canvas  # the slide opened
    assert viewer.canvas.overlays.scale_bar.position == "bottom_left"  # notifications pop up bottom right



def test_export_carries_the_prediction_clipped_to_the_slide_with_tissue_area(viewer_with_slide, qtbot, tmp_path,
                                                                             two_cares):
    import json

    from shapely.geometry import shape

    from care_core.regions.export import class_color

    viewer = viewer_with_slide
    _, (care, head) = two_cares
    widget = _widget(viewer)
    widget.add_trained(care, head)
    widget.slide_mpp.value = 0.45  # 284 px patches: 3072 px is 10.8 of them, the last column overhangs the slide
    _run(qtbot, widget)
    worker = widget.export_to(tmp_path / "out", formats=("geojson",))
    qtbot.waitUntil(lambda: widget.status.text().startswith("exported"), timeout=30_000)
    features = json.loads((tmp_path / "out" / "small_regions.geojson").read_text())["features"]
    assert worker is not None and len(features) == widget.result.encoding.n_regions
    for f in features:
        props, m = f["properties"], f["properties"]["measurements"]
        assert props["classification"] == {"name": "tumour", "color": list(class_color(1))}  # QuPath colours by it
        assert m["labels_region_region_all probability"] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-4)
        x0, y0, x1, y1 = shape(f["geometry"]).bounds
        assert x0 >= 0 and y0 >= 0 and x1 <= 3072 and y1 <= 2048  # no polygon overhangs the slide
        assert 0 < m["tissue_area_um2"] <= m["area_um2"]
    assert sum(f["properties"]["measurements"]["tissue_area_um2"] for f in features) < sum(
        f["properties"]["measurements"]["area_um2"] for f in features)  # glass in the patches is not counted
    # the table shows both areas
    headers = [widget.inspector.table.horizontalHeaderItem(j).text() for j in range(widget.inspector.table.columnCount())]
    assert headers[2:4] == ["tissue mm²", "patch mm²"]
    # opened back over the slide, the regions carry their predicted classes
    shapes = widget.import_annotations(tmp_path / "out" / "small_regions.geojson")
    assert set(shapes.features["class"]) == {"tumour"}


def test_a_region_half_annotated_otherwise_reads_mixed_with_its_purity(make_napari_viewer):
    """A region the head calls 100 % tumour, whose patches the pathologist's annotations split tumour / stroma:
    the inspector shows the composition and marks the call mixed, with its purity."""
    from care_core.model.encoding import HeadPrediction, SlideEncoding
    from care_core.pipeline import SlideResult

    grid = np.array([(c, r) for r in range(4) for c in range(8)])
    region = (grid[:, 0] >= 4).astype(np.int64)  # region 0: columns 0-3, region 1: columns 4-7
    pi = np.array([0.6, 0.4], np.float32)
    enc = SlideEncoding(slide_embedding=np.zeros(4, np.float32), region_embeddings=np.zeros((2, 4), np.float32),
                        patch_region=region, region_subregion=np.arange(2), pi=pi, alpha=pi, beta=pi, roi=0,
                        coords=grid * 512, grid=grid, patch_size_level0=512, mpp=0.5, patch_px=256, meta={})
    enc.predictions = [HeadPrediction("tissue", ("stroma", "tumour"), np.array([0.2, 0.8]),
                                      np.array([[0.0, 1.0], [1.0, 0.0]]))]
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((2048, 4096), np.uint8), scale=(0.5, 0.5), units=("µm", "µm"),
                             metadata={"path": "pieces.tif", "mpp": 0.5}, name="pieces")
    widget = CareWidget(viewer)
    widget.show_result(slide, SlideResult(enc, np.zeros((4, 8), bool), 512.0))
    widget.select_region(0)
    assert "<b>tumour</b>" in widget.inspector.details.text()  # no annotations: the head's call
    h, w = 4 * 512 * 0.5, 4 * 512 * 0.5  # region 0 in µm: its top half tumour, its bottom half stroma
    viewer.add_shapes([np.array([[0, 0], [0, w], [h / 2, w], [h / 2, 0]])], shape_type="polygon", name="tumour")
    viewer.add_shapes([np.array([[h / 2, 0], [h / 2, w], [h, w], [h, 0]])], shape_type="polygon", name="stroma")
    widget.select_region(0)
    text = widget.inspector.details.text()
    assert "<b>mixed (tumour 50% by the annotations)</b>" in text and "purity 50%" in text
    assert "annotated: tumour 50%, stroma 50%" in text or "annotated: stroma 50%, tumour 50%" in text
    widget.select_region(1)
    assert "annotated" not in widget.inspector.details.text()  # nothing drawn over region 1
