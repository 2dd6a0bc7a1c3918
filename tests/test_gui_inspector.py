"""GUI: inspect a result (click, hover, table, keyboard, Go to ROI, predictions) and move it in and out of files
(export every format, the napari writer, annotation import) from the CARE widget."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from care_core.model.encoding import HeadPrediction
from care_core.pipeline import ResultCache, iter_slide_pipeline
from care_core.regions import read_annotations, read_label_mask
from drain import drain
from napari_care._widget import CareWidget

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 256 px")


class _Mouse:
    """What napari's mouse callbacks read from an event."""

    def __init__(self, position, type_="mouse_press"):
        self.position, self.type, self.button = tuple(position), type_, 1
        self.modifiers, self.is_dragging, self.handled = [], False, False
        self.dims_displayed, self.view_direction = [0, 1], None


def _click(viewer, position) -> None:
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    event = _Mouse(position)
    mouse_press_callbacks(viewer, event)
    event.type = "mouse_release"
    mouse_release_callbacks(viewer, event)


def slide_with_result(make_napari_viewer, slide_path, cache_dir, monkeypatch, patch_px: int):
    """(viewer with the slide open, a CareWidget on it, the untrained CARE result of the slide at ``patch_px``),
    results cached under ``cache_dir``; the result is not shown yet."""
    monkeypatch.setenv("NAPARI_CARE_CACHE", str(cache_dir))
    viewer = make_napari_viewer()
    viewer.open(str(slide_path), plugin="napari-care")
    _, result = drain(iter_slide_pipeline(slide_path, patch_px=patch_px, cache=ResultCache(cache_dir / "results")))
    return viewer, CareWidget(viewer), result


@pytest.fixture
def shown(make_napari_viewer, small_sample, tmp_path_factory, monkeypatch):
    """A viewer with the small slide, the widget, and a CARE result carrying two heads' predictions."""
    viewer, widget, result = slide_with_result(make_napari_viewer, small_sample.slide_path,
                                               tmp_path_factory.getbasetemp() / "gui_cache", monkeypatch, 256)
    r = result.encoding.n_regions
    proba = np.tile([0.2, 0.8], (r, 1)).astype(np.float32)
    proba[0] = (0.9, 0.1)  # region 0 is tumour, the others stroma
    result.encoding.predictions = [
        HeadPrediction("tissue", ("tumour", "stroma"), np.array([0.3, 0.7]), proba),
        HeadPrediction("survival", ("risk",), np.array([1.25]), np.linspace(-1, 1, r)[:, None]),
    ]
    widget.show_result(viewer.layers[0], result, "untrained (seed 0)")
    return viewer, widget, result.encoding


def _patch_centre_um(enc, region):
    i = int(np.flatnonzero(enc.patch_region == region)[0])
    x, y = enc.coords[i] + enc.patch_size_level0 / 2
    return y * 0.5, x * 0.5


def test_click_selects_the_region_under_the_cursor(shown):
    viewer, widget, enc = shown
    viewer.layers.selection.active = viewer.layers[0]  # whatever layer is selected
    assert enc.n_regions >= 2
    _click(viewer, _patch_centre_um(enc, 1))
    assert widget.inspector.selected == 1
    text = widget.inspector.details.text()
    assert "region 1" in text and "the ROI" not in text and "tissue: <b>stroma</b> (tumour 20%, stroma 80%)" in text
    assert "survival: risk" in text and " mm²" in text and "π " in text
    roi = widget.layers["roi"]  # the selected region is outlined in white after the ROI's gold outline

    def white() -> int:
        return sum(tuple(c) == (1, 1, 1, 1) for c in roi.edge_color)

    assert white() >= 1 and tuple(roi.edge_color[0]) != (1, 1, 1, 1) and roi.nshapes == white() + len(widget.view.roi_paths)
    _click(viewer, _patch_centre_um(enc, 0))
    assert widget.inspector.selected == 0 and "tissue: <b>tumour</b> (tumour 90%, stroma 10%)" in widget.inspector.details.text()
    _click(viewer, (-50.0, -50.0))  # off the regions: nothing selected
    assert widget.inspector.selected is None and white() == 0 and roi.nshapes == len(widget.view.roi_paths)
    summary = widget.inspector.slide_summary.text()
    assert "<b>tissue</b>: <b>stroma</b> (tumour 30%, stroma 70%)" in summary and "<b>survival</b>: risk 1.25" in summary
    # hovering, whatever layer is selected, gives readable values
    from napari.utils.interactions import mouse_move_callbacks

    mouse_move_callbacks(viewer, _Mouse(_patch_centre_um(enc, 0), "mouse_move"))
    assert widget.inspector.hover.text().startswith("under cursor: region 0")
    assert "e+" not in widget.inspector.hover.text()


def test_table_rows_keys_and_go_to_roi_move_the_view(shown):
    viewer, widget, enc = shown
    table = widget.inspector.table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    assert headers == ["region", "patches", "tissue mm²", "patch mm²", "π %", "ROI", "tissue class", "tissue p(tumour)",
                       "tissue p(stroma)", "survival risk"]
    assert table.rowCount() == enc.n_regions
    table.sortItems(4)  # by π, ascending
    order = widget.inspector.table_order()
    assert [enc.pi[r] for r in order] == sorted(enc.pi)
    cam = viewer.scene.camera
    table.selectRow(1)
    rid = order[1]
    assert widget.inspector.selected == rid
    assert widget.region_at(cam.center) == rid  # centred on a patch of the region
    widget.inspector.next_button.click()
    assert widget.inspector.selected == order[2 % len(order)]
    widget.inspector.step(-1)
    assert widget.inspector.selected == rid
    widget.inspector.roi_button.click()
    assert widget.inspector.selected == enc.roi and "the ROI" in widget.inspector.details.text()


def test_export_every_format_and_read_it_back(shown, qtbot, tmp_path):
    viewer, widget, enc = shown
    worker = widget.export_to(tmp_path / "out")
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["small_encoding.npz", "small_regions.csv", "small_regions.geojson", "small_regions.ome.tif",
                     "small_regions.xml"]
    assert widget.status.text().startswith("exported ")
    regions = read_annotations(tmp_path / "out" / "small_regions.geojson")
    counts = np.bincount(enc.patch_region)
    assert [a.geometry.area for a in regions] == [c * 256**2 for c in counts]
    assert regions[0].properties["predictions"] == {"tissue": "tumour"}
    mask = read_label_mask(tmp_path / "out" / "small_regions.ome.tif")
    assert mask.dimensions == (3072, 2048) and mask.mpp == 0.5
    x, y = enc.coords[0]
    assert mask.levels[0][y + 10, x + 10] == enc.patch_region[0] + 1
    with open(tmp_path / "out" / "small_regions.csv", newline="") as fh:
        assert [r["tissue class"] for r in csv.DictReader(fh)][:2] == ["tumour", "stroma"]
    # the napari writer contribution: save the regions layer by file name
    viewer.layers.selection.active = widget.layers["regions"]
    written = viewer.layers.save(str(tmp_path / "r.xml"), selected=True, plugin="napari-care")
    assert written == [str(tmp_path / "r.xml")]
    assert [a.geometry.area for a in read_annotations(written[0])] == [c * 256**2 for c in counts]


def test_import_annotations_lands_on_the_slide(shown, tmp_path):
    viewer, widget, _ = shown
    path = tmp_path / "a.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="t" Type="Polygon" PartOfGroup="tumour">'
                    '<Coordinates><Coordinate Order="0" X="1000" Y="500"/><Coordinate Order="1" X="1400" Y="500"/>'
                    '<Coordinate Order="2" X="1400" Y="900"/></Coordinates></Annotation></Annotations>'
                    '<AnnotationGroups/></ASAP_Annotations>')
    shapes = widget.import_annotations(path)
    np.testing.assert_allclose(shapes.data[0], np.array([[500, 1000], [500, 1400], [900, 1400]]) * 0.5 - 0.25)
    assert widget.status.text() == "1 annotations from a.xml"
    bad = tmp_path / "b.geojson"
    bad.write_text("{oops")
    assert widget.import_annotations(bad) is None and "not valid JSON" in widget.status.text()
