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


def test_reader_declines_unreadable_files(tmp_path, svs):
    assert get_reader(str(write_not_a_tiff(tmp_path / "notes.tif"))) is None
    assert get_reader(str(truncate(svs))) is None
    assert get_reader(str(tmp_path / "missing.svs")) is None
    assert get_reader([str(svs), str(svs)]) is None


def test_unreadable_file_does_not_crash_viewer(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    bad = write_not_a_tiff(tmp_path / "bad.svs")
    with pytest.raises(Exception):  # napari reports that no reader could read it; the viewer survives
        viewer.open(str(bad), plugin="napari-care")
    assert len(viewer.layers) == 0
