"""care_core.wsi.open_slide on small slides written by tifffile: geometry, mpp, pixels, errors."""

from __future__ import annotations

import ctypes
import types
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import tiffslide
from PIL import Image
from slide_factory import (
    corrupt_tiles,
    pattern_image,
    pyramid,
    truncate,
    write_flat,
    write_generic_pyramid,
    write_grey_float,
    write_not_a_tiff,
    write_ome_pyramid,
    write_svs,
    write_uint16_multichannel,
)

from care_core.errors import MissingMppError, SlideOpenError
from care_core.wsi import SlideInfo, open_slide
from care_core.wsi import slide as slide_module

W, H = 1200, 800  # level-0 size of the test pyramids (px)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern_image(W, H, seed=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, image) -> dict:
    d = tmp_path_factory.mktemp("slides")
    return {
        "svs": write_svs(d / "a.svs", image, n_levels=3, mpp=0.499, app_mag=20),
        "svs_zlib": write_svs(d / "z.svs", image, n_levels=3, compression="zlib"),
        "generic": write_generic_pyramid(d / "g.tif", image, n_levels=3, mpp=0.25),
        "bigtiff": write_generic_pyramid(d / "b.tif", image, n_levels=2, mpp=0.25, bigtiff=True),
        "ome": write_ome_pyramid(d / "o.ome.tif", image, n_levels=3, mpp=0.5),
        "ome_nm": write_ome_pyramid(d / "n.ome.tif", image, n_levels=2, mpp=260.0, mpp_unit="nm"),
        "no_mpp": write_generic_pyramid(d / "nompp.tif", image, n_levels=2, mpp=None),
        "flat": write_flat(d / "f.tif", pattern_image(2400, 1600, seed=2), mpp=0.25, tile_px=256),
    }


@pytest.mark.parametrize(
    ("kind", "levels", "mpp", "vendor"),
    [
        ("svs", 3, 0.499, "aperio"),
        ("generic", 3, 0.25, "generic-tiff"),
        ("bigtiff", 2, 0.25, "generic-tiff"),
        ("ome", 3, 0.5, "ome-tiff"),
        ("ome_nm", 2, 0.26, "ome-tiff"),
    ],
)
def test_geometry_and_mpp_per_format(files, kind, levels, mpp, vendor):
    with open_slide(files[kind]) as slide:
        info = slide.info
        assert isinstance(info, SlideInfo)
        assert info.dimensions == (W, H) == slide.dimensions
        assert info.level_count == levels
        assert info.level_dimensions == ((1200, 800), (600, 400), (300, 200))[:levels]
        assert info.level_downsamples == (1.0, 2.0, 4.0)[:levels]
        assert info.mpp == pytest.approx(mpp)
        assert info.vendor == vendor
        assert slide.level_mpp(levels - 1) == pytest.approx(mpp * 2 ** (levels - 1))


def test_svs_objective_and_associated_images(files):
    with open_slide(files["svs"]) as slide:
        assert slide.info.objective_power == 20.0
        assert slide.info.associated_images == ("thumbnail", "label", "macro")
        assoc = slide.associated_images
        assert assoc["label"].shape == (60, 80, 3) and assoc["label"].dtype == np.uint8
        assert assoc["macro"].shape == (50, 150, 3)
        assert (assoc["label"] == 200).all()
        assert assoc["thumbnail"].shape == (50, 75, 3)


def test_user_mpp_overrides_file(files):
    with open_slide(files["svs"], mpp=0.25) as slide:
        assert slide.mpp == 0.25


def test_unknown_mpp_warns_and_stays_none(files):
    with pytest.warns(UserWarning, match=r"records no pixel size.*mpp="):
        slide = open_slide(files["no_mpp"])
    assert slide.mpp is None and slide.level_mpp(1) is None
    slide.close()


@pytest.mark.parametrize("kind", ["generic", "ome", "svs_zlib"])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_read_region_returns_written_pixels(files, image, kind, level):
    expected = pyramid(image, 3)[level]
    with open_slide(files[kind]) as slide:
        region = slide.read_region((300, 200), level, (130, 70))
        ds = 2**level
        assert region.shape == (70, 130, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, expected[200 // ds : 200 // ds + 70, 300 // ds : 300 // ds + 130])


def test_read_region_outside_is_white(files, image):
    with open_slide(files["generic"]) as slide:
        region = slide.read_region((W - 10, -5), 0, (20, 15))
    np.testing.assert_array_equal(region[5:, :10], image[0:10, W - 10 : W])
    assert (region[:5] == 255).all() and (region[:, 10:] == 255).all()


def test_read_region_bad_level(files):
    with open_slide(files["generic"]) as slide, pytest.raises(ValueError, match=r"level=3 out of range \(slide has 3"):
        slide.read_region((0, 0), 3, (10, 10))


def test_levels_are_lazy_dask_chunked_by_tiles(files, image):
    with open_slide(files["generic"]) as slide:
        assert all(isinstance(level, da.Array) for level in slide.levels)
        assert slide.levels[0].shape == (H, W, 3) and slide.levels[0].dtype == np.uint8
        assert slide.levels[0].chunks[:2] == ((256, 256, 256, 32), (256,) * 4 + (176,))
        assert slide.levels[2].chunksize == (200, 256, 3)
        np.testing.assert_array_equal(slide.levels[1].compute(), image[::2, ::2])


@pytest.mark.parametrize(
    "index", [np.s_[3:10, 5:9], np.s_[3:300:2, 600:5:-3, 1], np.s_[7, :, :2], np.s_[-1, -5:], np.s_[::-1, ::7]]
)
def test_level_slicing_matches_numpy(files, image, index):
    with open_slide(files["generic"]) as slide:
        np.testing.assert_array_equal(slide.levels[0][index].compute(), image[index])


def test_level_slice_is_fused_into_the_read(files, image):
    """A sub-tile slice reaches the reader as that slice, not as a whole tile to cut afterwards."""
    with open_slide(files["generic"]) as slide:
        level = next(v for k, v in slide.levels[0].dask.items() if isinstance(k, str))
        calls = []
        read = level.read
        level.read = lambda rows, cols: calls.append((rows, cols)) or read(rows, cols)
        region = slide.levels[0][300:310, 520:530].compute()
    assert calls == [(slice(300, 310), slice(520, 530))]
    np.testing.assert_array_equal(region, image[300:310, 520:530])


def test_levels_thread_safe(files, image):
    """napari reads chunks from worker threads: concurrent chunk reads return the written pixels."""
    with open_slide(files["generic"]) as slide:
        level0 = slide.levels[0]
        blocks = [(i, j) for i in range(level0.numblocks[0]) for j in range(level0.numblocks[1])] * 4
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda ij: level0.blocks[ij[0], ij[1], 0].compute(scheduler="sync"), blocks))
    for (i, j), block in zip(blocks, results):
        np.testing.assert_array_equal(block, image[i * 256 : i * 256 + 256, j * 256 : j * 256 + 256])


def test_flat_tiff_gets_lazy_mean_levels(files):
    src = pattern_image(2400, 1600, seed=2)
    with open_slide(files["flat"]) as slide:
        assert slide.level_dimensions == ((2400, 1600), (1200, 800), (600, 400))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        expected1 = np.round(src.reshape(800, 2, 1200, 2, 3).mean(axis=(1, 3))).astype(np.uint8)
        np.testing.assert_array_equal(slide.read_region((0, 0), 1, (1200, 800)), expected1)
        # each lazy level is the block mean of level 0 itself (not of the rounded level above)
        expected2 = np.round(src.reshape(400, 4, 600, 4, 3).mean(axis=(1, 3))).astype(np.uint8)
        np.testing.assert_array_equal(slide.levels[2][100:140, 200:260].compute(), expected2[100:140, 200:260])
        assert slide.levels[1].chunksize[:2] == slide.levels[2].chunksize[:2] == (256, 256)


def test_best_level_for_downsample(files):
    with open_slide(files["generic"]) as slide:
        assert [slide.get_best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.99, 4, 100)] == [0, 0, 0, 1, 1, 2, 2]


def test_thumbnail_size(files, image):
    with open_slide(files["generic"]) as slide:
        thumb = slide.thumbnail(300)
        assert thumb.shape == (200, 300, 3) and thumb.dtype == np.uint8
        assert slide.thumbnail(5000).shape == (H, W, 3)
        assert slide.thumbnail(100).shape == (67, 100, 3)
        # a thumbnail is the image smoothed, not something else
        assert abs(float(thumb.mean()) - float(image.mean())) < 3


def test_openslide_backend_path(files, image, monkeypatch):
    """The OpenSlide code path, driven by tiffslide (a drop-in with the same API) as the module."""
    fake = types.SimpleNamespace(
        OpenSlide=tiffslide.TiffSlide,
        PROPERTY_NAME_MPP_X=tiffslide.PROPERTY_NAME_MPP_X,
        PROPERTY_NAME_VENDOR=tiffslide.PROPERTY_NAME_VENDOR,
        PROPERTY_NAME_OBJECTIVE_POWER=tiffslide.PROPERTY_NAME_OBJECTIVE_POWER,
    )
    monkeypatch.setattr(slide_module, "_import_openslide", lambda: fake)
    with open_slide(files["svs_zlib"], backend="openslide") as slide:
        assert slide.level_dimensions == ((1200, 800), (600, 400), (300, 200))
        assert slide.mpp == pytest.approx(0.499) and slide.info.vendor == "aperio"
        assert slide.levels[0].chunksize == (256, 256, 3)
        np.testing.assert_array_equal(slide.levels[1][100:300, 250:520].compute(), image[::2, ::2][100:300, 250:520])
        assert slide.associated_images["label"].shape == (60, 80, 3)



def test_real_openslide_backend_matches_tiffslide(files):
    """The real OpenSlide library (openslide-bin) reads the same geometry, mpp and pixels as the default backend."""
    pytest.importorskip("openslide", reason="openslide-python / openslide-bin not installed")
    with open_slide(files["svs_zlib"], backend="openslide") as osl, open_slide(files["svs_zlib"]) as tsl:
        assert osl.level_dimensions == tsl.level_dimensions == ((1200, 800), (600, 400), (300, 200))
        assert osl.level_downsamples == pytest.approx(tsl.level_downsamples)
        assert osl.info.vendor == tsl.info.vendor == "aperio"
        assert osl.mpp == pytest.approx(tsl.mpp)
        np.testing.assert_array_equal(osl.levels[0][200:500, 300:700].compute(), tsl.levels[0][200:500, 300:700].compute())
        np.testing.assert_array_equal(osl.read_region((100, 50), 1, (200, 120)), tsl.read_region((100, 50), 1, (200, 120)))


def test_composite_over_background_by_straight_alpha():
    """OpenSlide's Python RGBA is straight (not premultiplied): out = round(rgb * a + bg * (1 - a)), a = alpha / 255."""
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 0, 128], [12, 34, 56, 255]]], np.uint8)
    region = Image.fromarray(rgba, "RGBA")
    white = slide_module._composite_over(region, (255, 255, 255))
    # 200 * 128/255 + 255 * 127/255 = 227.39; 100 * 128/255 + 127 = 177.20; 0 + 127 = 127
    np.testing.assert_array_equal(white, [[[255, 255, 255], [227, 177, 127], [12, 34, 56]]])
    cream = slide_module._composite_over(region, (240, 224, 208))
    # 100.39 + 240 * 127/255 = 219.92; 50.20 + 224 * 127/255 = 161.76; 208 * 127/255 = 103.59
    np.testing.assert_array_equal(cream, [[[240, 224, 208], [220, 162, 104], [12, 34, 56]]])
    assert white.dtype == np.uint8 and white.shape == (1, 3, 3)
    opaque = Image.fromarray(rgba[..., :3].copy(), "RGB")  # no alpha: pixels pass through
    np.testing.assert_array_equal(slide_module._composite_over(opaque, (0, 0, 0)), rgba[..., :3])


@pytest.mark.parametrize(("value", "rgb"), [("FFFFFF", (255, 255, 255)), ("F0E0d0", (240, 224, 208)),
                                            ("000000", (0, 0, 0)), (None, (255, 255, 255)),
                                            ("white", (255, 255, 255)), ("FFF", (255, 255, 255))])
def test_background_colour_property(value, rgb):
    assert slide_module._background_rgb(value) == rgb


def test_real_openslide_transparent_pixels_are_white(files, image):
    """OpenSlide returns transparent black outside the slide; the openslide reader turns it into white glass."""
    openslide = pytest.importorskip("openslide", reason="openslide-python / openslide-bin not installed")
    with openslide.OpenSlide(str(files["svs_zlib"])) as osr:  # the raw library: alpha 0, rgb 0 past the edge
        raw = np.asarray(osr.read_region((W - 100, H - 50), 0, (200, 120)))
        assert (raw[50:, :, 3] == 0).all() and (raw[50:, :, :3] == 0).all() and (raw[:50, :100, 3] == 255).all()
    with open_slide(files["svs_zlib"], backend="openslide") as slide:
        block = slide._readers[0](slice(H - 50, H + 70), slice(W - 100, W + 100))  # a tile read partly off the slide
        assert block.shape == (120, 200, 3) and block.dtype == np.uint8
        np.testing.assert_array_equal(block[:50, :100], image[H - 50 :, W - 100 :])
        assert (block[50:] == 255).all() and (block[:, 100:] == 255).all()
        region = slide.read_region((W - 100, H - 50), 0, (200, 120))
        np.testing.assert_array_equal(region, block)


def _record_closes(monkeypatch, cls) -> list:
    """Wrap ``cls.close`` so each call is recorded (the handle is still really closed)."""
    closed: list = []
    original = cls.close

    def close(self) -> None:
        closed.append(self)
        original(self)

    monkeypatch.setattr(cls, "close", close)
    return closed


def _raise_late(*args, **kwargs):
    raise RuntimeError("late failure while building levels")


def test_tiffslide_handle_closed_on_a_late_error(files, monkeypatch):
    closed = _record_closes(monkeypatch, tiffslide.TiffSlide)
    monkeypatch.setattr(slide_module, "add_lazy_levels", _raise_late)
    with pytest.raises(RuntimeError, match="late failure while building levels"):
        open_slide(files["svs"])
    assert len(closed) == 1 and closed[0].ts_tifffile.filehandle.closed


def test_tiffslide_handle_closed_when_the_ifds_fail(files, monkeypatch):
    closed = _record_closes(monkeypatch, tiffslide.TiffSlide)

    def broken(self):
        raise ValueError("bad IFD chain")

    monkeypatch.setattr(tifffile.TiffFile, "series", property(broken))  # TiffSlide opened, its series unreadable
    with pytest.raises(SlideOpenError, match=r"a\.svs: corrupt TIFF \(bad IFD chain\); re-export"):
        open_slide(files["svs"])
    assert len(closed) == 1 and closed[0].ts_tifffile.filehandle.closed


def test_tiffslide_handle_closed_on_bad_mpp(files, monkeypatch):
    closed = _record_closes(monkeypatch, tiffslide.TiffSlide)
    with pytest.raises(MissingMppError, match=r"mpp=0\.0 µm/px is outside the plausible range"):
        open_slide(files["svs"], mpp=0.0)
    assert len(closed) == 1 and closed[0].ts_tifffile.filehandle.closed


def test_openslide_handle_closed_on_a_late_error(files, monkeypatch):
    openslide = pytest.importorskip("openslide", reason="openslide-python / openslide-bin not installed")
    closed = _record_closes(monkeypatch, openslide.OpenSlide)
    monkeypatch.setattr(slide_module, "add_lazy_levels", _raise_late)
    with pytest.raises(RuntimeError, match="late failure while building levels"):
        open_slide(files["svs_zlib"], backend="openslide")
    assert len(closed) == 1
    with pytest.raises(ctypes.ArgumentError, match="closed slide object"):  # the C handle is gone
        closed[0].level_count


# --- bad input: one clear project error naming the file, the problem and the fix -----------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match=r"nope\.svs: no such file; check the path"):
        open_slide(tmp_path / "nope.svs")


def test_directory(tmp_path):
    with pytest.raises(SlideOpenError, match=r"is a directory, not a slide file"):
        open_slide(tmp_path)


def test_not_a_tiff(tmp_path):
    path = write_not_a_tiff(tmp_path / "x.svs")
    with pytest.raises(SlideOpenError, match=r"x\.svs: not a TIFF file \(starts with .*PNG.*openslide"):
        open_slide(path, backend="tiffslide")


def test_truncated(tmp_path, image):
    path = truncate(write_svs(tmp_path / "t.svs", image), 0.5)
    message = r"t\.svs: file is truncated \(\d+ bytes.*copy or download the slide again"
    with pytest.raises(SlideOpenError, match=message):
        open_slide(path)


@pytest.mark.parametrize("kind", ["svs", "generic", "ome", "flat"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999, -1])
def test_truncated_any_layout_any_cut(files, tmp_path, kind, keep):
    """A partial copy cut anywhere (IFD chain, SubIFDs, OME-XML, tile data, the last byte) is refused."""
    data = files[kind].read_bytes()
    cut = tmp_path / files[kind].name
    cut.write_bytes(data[: len(data) - 1] if keep == -1 else data[: int(len(data) * keep)])
    with pytest.raises(SlideOpenError, match=rf"{cut.name}: file is truncated \(\d+ bytes, but .* ends at byte"):
        open_slide(cut)


def test_corrupt_header(tmp_path, image):
    path = write_generic_pyramid(tmp_path / "c.tif", image)
    raw = bytearray(path.read_bytes())
    raw[4:8] = (len(raw) + 1000).to_bytes(4, "little")  # first IFD offset points past the end
    path.write_bytes(bytes(raw))
    with pytest.raises(SlideOpenError, match=r"c\.tif: corrupt TIFF .*re-export"):
        open_slide(path)


def test_corrupt_tiles(tmp_path, image):
    path = corrupt_tiles(write_generic_pyramid(tmp_path / "d.tif", image))
    with pytest.raises(SlideOpenError, match=r"d\.tif: corrupt image data at level 0"):
        open_slide(path)


def test_grey_float(tmp_path):
    path = write_grey_float(tmp_path / "f.tif")
    message = r"f\.tif: not an 8-bit RGB .*dtype=float32.*export the slide as 8-bit RGB"
    with pytest.raises(SlideOpenError, match=message):
        open_slide(path)


def test_uint16_multichannel(tmp_path):
    path = write_uint16_multichannel(tmp_path / "m.tif")
    with pytest.raises(SlideOpenError, match=r"m\.tif: not an 8-bit RGB .*shape=\(4, 384, 512\).*uint16"):
        open_slide(path)


@pytest.mark.parametrize("bad", [0.0, -0.5, 0.01, 500.0])
def test_absurd_user_mpp(files, bad):
    with pytest.raises(MissingMppError, match=rf"g\.tif: mpp={bad!r} µm/px is outside the plausible range"):
        open_slide(files["generic"], mpp=bad)


def test_absurd_file_mpp(tmp_path, image):
    path = write_generic_pyramid(tmp_path / "abs.tif", image, n_levels=2, mpp=0.001)
    message = r"abs\.tif: pixel size 0\.001 µm/px \(from the TIFF XResolution/ResolutionUnit tags\).*mpp="
    with pytest.raises(MissingMppError, match=message):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:  # a user value replaces the absurd one
        assert slide.mpp == 0.5


def test_unknown_backend(files):
    with pytest.raises(ValueError, match=r"backend='pil' is not one of"):
        open_slide(files["generic"], backend="pil")


def test_openslide_backend_absent(files, monkeypatch):
    monkeypatch.setattr(slide_module, "_import_openslide", lambda: None)
    with pytest.raises(SlideOpenError, match=r"backend='openslide' needs openslide; pip install"):
        open_slide(files["generic"], backend="openslide")

