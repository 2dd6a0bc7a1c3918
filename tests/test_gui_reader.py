"""GUI: the reader opens a slide as one lazy multiscale layer in a real napari viewer, and declines what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
from slide_factory import tissue_image, truncate, write_not_a_tiff, write_svs

from napari_care._reader import get_reader


@pytest.fixture
def svs(tmp_path):
    return write_svs(tmp_path / "slide.svs", tissue_image(1024, 768, [(500, 380, 300)], seed=1), n_levels=3, mpp=0.5, compression="zlib")


def test_reader_gives_one_multiscale_layer_in_um(svs, make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(svs), plugin="napari-care")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert [tuple(d.shape) for d in layer.data] == [(768, 1024, 3), (384, 512, 3), (192, 256, 3)]
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["mpp"] == pytest.approx(0.5)
    assert layer.metadata["vendor"] == "aperio"
    assert layer.metadata["path"].endswith("slide.svs")
    # pixels served through the layer are the slide's pixels
    from tiffslide import TiffSlide

    with TiffSlide(svs) as ts:
        ref = np.asarray(ts.read_region((0, 0), 0, (1024, 768)))[..., :3]
    np.testing.assert_array_equal(np.asarray(layer.data[0][:768, :1024]), ref)


def test_reader_declines_what_other_readers_may_open(tmp_path, svs):
    assert get_reader(str(write_not_a_tiff(tmp_path / "notes.tif"))) is None
    assert get_reader(str(tmp_path / "missing.svs")) is None
    assert get_reader([str(svs), str(svs)]) is None


def test_broken_slide_reports_the_library_message(tmp_path, svs, make_napari_viewer):
    from care_core.errors import SlideOpenError
    from care_core.wsi import open_slide

    bad = truncate(svs)
    with pytest.raises(SlideOpenError) as library:
        open_slide(bad)
    reader = get_reader(str(bad))  # an .svs no other napari reader opens: ours answers, with the library's words
    with pytest.raises(SlideOpenError) as gui:
        reader(str(bad))
    assert str(gui.value) == str(library.value)
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as opened:  # napari's message carries ours; the viewer survives
        viewer.open(str(bad), plugin="napari-care")
    assert str(library.value) in str(opened.value) + str(opened.value.__cause__)
    assert len(viewer.layers) == 0


def test_geojson_opens_as_shapes_over_the_slide(svs, tmp_path, make_napari_viewer):
    import json

    viewer = make_napari_viewer()
    viewer.open(str(svs), plugin="napari-care")
    path = tmp_path / "tumour.geojson"
    box = [[[100, 200], [300, 200], [300, 260], [100, 260], [100, 200]]]  # level-0 px
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": box},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}))
    (shapes,) = viewer.open(str(path), plugin="napari-care")
    assert shapes.name == "tumour.geojson" and shapes.nshapes == 1
    # vertices at level-0 pixel corners: x = 100 px is the left edge of pixel 100, at (100 - 0.5) * 0.5 µm
    np.testing.assert_allclose(shapes.data[0].min(axis=0), ((200 - 0.5) * 0.5, (100 - 0.5) * 0.5))
    np.testing.assert_allclose(shapes.data[0].max(axis=0), ((260 - 0.5) * 0.5, (300 - 0.5) * 0.5))
    np.testing.assert_allclose(shapes.edge_color[0], (200 / 255, 0, 0, 1))
    assert list(shapes.features["class"]) == ["Tumor"]
