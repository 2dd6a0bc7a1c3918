"""GUI: Find similar from the Inspect tab, against the open slide and against a region index: the gallery's
answers and thumbnails, the refusal of an index of another model, and a click that goes to the answer (its
slide opened and shown alone, the region outlined and fitted in the view)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from care_core.search import build_index
from care_core.search.thumbs import OUTLINE_RGB
from napari_care._gallery import INDEX
from napari_care._view import camera, zoom_of

from test_gui_inspector import _click, slide_with_result

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 128 px")


@pytest.fixture
def shown(make_napari_viewer, small_sample, tmp_path_factory, monkeypatch):
    viewer, widget, result = slide_with_result(make_napari_viewer, small_sample.slide_path,  # 128 px: 6 regions
                                               tmp_path_factory.getbasetemp() / "gui_similar_cache", monkeypatch, 128)
    widget.show_result(viewer.layers[0], result, "untrained (seed 0)")
    return viewer, widget, result.encoding


def _find(qtbot, widget):
    worker = widget.find_similar()
    assert worker is not None and not widget.find_button.isEnabled()  # one search at a time
    qtbot.waitUntil(lambda: widget.similar_worker is None, timeout=60_000)
    return widget.similar.items


def test_find_similar_in_the_open_slide_fills_the_gallery_in_cosine_order(qtbot, shown):
    viewer, widget, enc = shown
    assert not widget.find_button.isEnabled()  # nothing selected yet
    widget.select_region(1)
    assert widget.find_button.isEnabled()
    widget.similar.k.setValue(3)
    items = _find(qtbot, widget)
    emb = enc.region_token_means / np.linalg.norm(enc.region_token_means, axis=1, keepdims=True)  # by mean tokens
    sims = emb @ emb[1]
    sims[1] = -np.inf
    assert [i.hit.region for i in items] == list(np.argsort(-sims, kind="stable")[:3])
    np.testing.assert_allclose([i.hit.similarity for i in items], np.sort(sims)[::-1][:3], atol=1e-5)
    assert widget.tabs.currentWidget() is widget.similar and widget.similar.gallery.count() == 3
    for item in items:  # a thumbnail per answer with its region outlined
        assert item.thumbnail.shape == (128, 128, 3) and (item.thumbnail == OUTLINE_RGB).all(axis=2).any()
    caption = widget.similar.gallery.item(0).text()
    assert caption.startswith(f"small\nregion {items[0].hit.region} · d {1 - items[0].hit.similarity:.3f}")
    assert widget.similar.status.text().startswith("3 regions like region 1 of small (")

    widget.similar.gallery.itemClicked.emit(widget.similar.gallery.item(1))  # an answer in this slide: selected
    assert widget.inspector.selected == items[1].hit.region
    assert all(lyr.visible for lyr in viewer.layers if lyr.metadata.get("care_kind") not in ("pi", "tissue"))  # none hidden


def test_find_similar_in_an_index_opens_the_answer_s_slide_at_the_region(qtbot, shown, small_sample, tmp_path):
    viewer, widget, enc = shown
    twin = tmp_path / "twin.svs"  # the same scan under another name: its region 2 is the closest answer
    shutil.copy(small_sample.slide_path, twin)
    for name, path in (("small", small_sample.slide_path), ("twin", twin)):
        enc.meta["slide_path"] = str(path)
        enc.save_npz(tmp_path / f"{name}_encoding.npz")
    build_index([tmp_path / "small_encoding.npz", tmp_path / "twin_encoding.npz"], tmp_path / "index")
    widget.select_region(2)
    widget.similar.source.setCurrentText(INDEX)
    widget.similar.index.value = str(tmp_path / "index")
    items = _find(qtbot, widget)
    first = items[0].hit
    assert (first.slide, first.region) == ("twin", 2) and first.similarity == pytest.approx(1.0, abs=1e-6)
    assert ("small", 2) not in [(i.hit.slide, i.hit.region) for i in items]  # the query itself is left out
    assert "in index index" in widget.similar.status.text()

    widget.similar.gallery.itemClicked.emit(widget.similar.gallery.item(0))
    slide_layers = [lyr for lyr in viewer.layers if lyr.metadata.get("path")]
    assert [lyr.name for lyr in slide_layers] == ["small", "twin"]  # opened
    assert [lyr.name for lyr in viewer.layers if lyr.visible] == ["twin", "similar region"]  # shown alone
    outline = next(lyr for lyr in viewer.layers if lyr.metadata.get("care_kind") == "similar")
    mpp = float(slide_layers[1].scale[-1])
    x0, y0, x1, y1 = first.bbox
    corners = np.concatenate(outline.data)
    np.testing.assert_allclose(corners.min(0), np.array([y0, x0]) * mpp - 0.5 * mpp)
    np.testing.assert_allclose(corners.max(0), np.array([y1, x1]) * mpp - 0.5 * mpp)
    np.testing.assert_allclose(camera(viewer).center[-2:], [(y0 + y1) / 2 * mpp, (x0 + x1) / 2 * mpp])
    assert outline.edge_width[0] == pytest.approx(3.0 / zoom_of(viewer))  # 3 screen px
    selected = widget.inspector.selected
    _click(viewer, camera(viewer).center[-2:])  # a click on the other slide selects none of the first one's regions
    assert widget.inspector.selected == selected and viewer.layers.selection.active.name == "twin"

    back = next(i for i, item in enumerate(items) if item.hit.slide == "small")  # an answer in the analysed slide
    widget.similar.gallery.itemClicked.emit(widget.similar.gallery.item(back))
    assert slide_layers[0].visible and not slide_layers[1].visible and widget.layers["regions"].visible
    assert widget.inspector.selected == items[back].hit.region and len(outline.data) == 0


def test_an_index_of_another_model_is_refused_in_one_line(qtbot, shown, tmp_path):
    viewer, widget, enc = shown
    enc.meta["model_sha256"], real = "f" * 64, enc.meta.get("model_sha256")
    enc.save_npz(tmp_path / "other_encoding.npz")
    enc.meta["model_sha256"] = real
    build_index([tmp_path / "other_encoding.npz"], tmp_path / "index")
    widget.select_region(0)
    widget.similar.source.setCurrentText(INDEX)
    assert widget.find_similar() is None  # no folder chosen yet
    assert widget.similar.status.text() == "choose the index folder (made by care index), or search this slide"
    widget.similar.index.value = str(tmp_path / "index")
    assert _find(qtbot, widget) == []
    text = widget.similar.status.text()
    assert text.startswith("error: slide 'small' was encoded with CARE model ") and "but the index holds model ffffffffffff" in text
    assert widget.similar.gallery.count() == 0 and widget.find_button.isEnabled()


def test_an_answer_whose_slide_file_is_gone_shows_a_grey_tile_and_says_so(qtbot, shown, small_sample, tmp_path):
    viewer, widget, enc = shown
    gone = tmp_path / "gone.svs"
    shutil.copy(small_sample.slide_path, gone)
    enc.meta["slide_path"] = str(gone)
    enc.save_npz(tmp_path / "gone_encoding.npz")
    build_index([tmp_path / "gone_encoding.npz"], tmp_path / "index")
    gone.unlink()  # moved away after indexing
    widget.select_region(0)
    widget.similar.source.setCurrentText(INDEX)
    widget.similar.index.value = str(tmp_path / "index")
    items = _find(qtbot, widget)
    assert items and all(i.slide_path is None and i.thumbnail is None for i in items)
    assert widget.similar.gallery.item(0).text().endswith("\nslide file not found")
    layers = len(viewer.layers)
    widget.similar.gallery.itemClicked.emit(widget.similar.gallery.item(0))
    assert len(viewer.layers) == layers  # nothing opened
    assert widget.similar.status.text() == ("gone: the slide file is not found here (the index records where it was "
                                            "encoded); open it with File → Open")
