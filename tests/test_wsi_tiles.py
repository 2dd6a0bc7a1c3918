"""care_core.wsi._tiles: the lazy tile layer (reads only what a slice touches, O(1) graph per tile) and
the direct tifffile tile reader (same pixels as zarr)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest
import tifffile
import tiffslide
from slide_factory import pattern_image, write_generic_pyramid, write_ome_pyramid, write_svs

from care_core.wsi._tiles import tiff_tile_reader, tiled_level, zarr_reader


def logged_level(image: np.ndarray, tile_hw: tuple[int, int], token: str = "t"):
    """A level over an in-memory image whose reader logs every (rows, cols) it is asked for."""
    calls: list[tuple[slice, slice]] = []

    def read(rows: slice, cols: slice) -> np.ndarray:
        calls.append((rows, cols))
        return image[rows, cols]

    return tiled_level(read, image.shape[:2], tile_hw, token), calls


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern_image(1300, 1000, seed=3)  # (1000, 1300, 3): 4 x 6 tiles of 256, partial at the edges


def test_chunks_are_the_tiles(image):
    level, calls = logged_level(image, (256, 256))
    assert level.shape == (1000, 1300, 3) and level.dtype == np.uint8
    assert level.chunks == ((256, 256, 256, 232), (256,) * 5 + (20,), (3,))
    assert calls == []


def test_slice_reads_only_the_tiles_it_touches(image):
    level, calls = logged_level(image, (256, 256))
    np.testing.assert_array_equal(level[250:600, 700:800].compute(), image[250:600, 700:800])
    rows = [slice(250, 256), slice(256, 512), slice(512, 600)]
    cols = [slice(700, 768), slice(768, 800)]
    assert sorted(calls, key=str) == sorted([(r, c) for r in rows for c in cols], key=str)


def blank(rows: slice, cols: slice) -> np.ndarray:
    return np.full((rows.stop - rows.start, cols.stop - cols.start, 3), 7, np.uint8)


def test_one_tile_graph_has_three_tasks_whatever_the_slide_size():
    sizes = []
    for side_tiles in (4, 2000):  # 16 vs 4 million tiles
        level = tiled_level(blank, (side_tiles * 256, side_tiles * 256), (256, 256), f"n{side_tiles}")
        view = level[512:768, 256:512]
        keys = set(dask.core.flatten(view.__dask_keys__()))
        culled = dict(view.__dask_graph__().cull(keys))
        assert not level.dask.layers[level.name].is_materialized()
        assert (level.name, 2, 1, 0) in culled and f"wsi-level-n{side_tiles}" in culled
        sizes.append(len(culled))
    assert sizes == [3, 3]  # the slice, its one tile, the array-like


def test_compute_never_walks_the_whole_layer(monkeypatch):
    level = tiled_level(blank, (512_000, 512_000), (256, 256), "huge")
    layer_type = type(level.dask.layers[level.name])
    monkeypatch.setattr(layer_type, "__iter__", lambda self: pytest.fail("iterated all keys"))
    monkeypatch.setattr(layer_type, "get_output_keys", lambda self: pytest.fail("listed all keys"))
    for scheduler in ("sync", "threads"):
        np.testing.assert_array_equal(level[1000:1010, 300_000:300_300].compute(scheduler=scheduler),
                                      np.full((10, 300, 3), 7, np.uint8))


def test_layer_is_a_full_graph_when_asked(image):
    level, calls = logged_level(image, (256, 256))
    layer = level.dask.layers[level.name]
    assert len(layer) == 1 + 4 * 6
    assert set(layer) - {layer.source} == set(dask.core.flatten(level.__dask_keys__()))
    assert (level.name, 4, 0, 0) not in layer and (level.name, 0, 0, 1) not in layer
    with pytest.raises(KeyError):
        layer[(level.name, 0, 6, 0)]
    np.testing.assert_array_equal(level.compute(optimize_graph=False), image)
    assert len(calls) == 24


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_bulk_reductions_read_every_tile_once(image, scheduler):
    level, calls = logged_level(image, (256, 256))
    sums = level.sum(axis=(0, 1), dtype=np.int64).compute(scheduler=scheduler)
    np.testing.assert_array_equal(sums, image.sum(axis=(0, 1), dtype=np.int64))
    assert len(calls) == 24 and len(set(map(str, calls))) == 24


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("tiles")
    img = pattern_image(1000, 700, seed=4)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    return {
        "svs_jpeg": write_svs(d / "a.svs", img, n_levels=2),
        "generic_zlib": write_generic_pyramid(d / "g.tif", img, n_levels=2),
        "ome_zlib": write_ome_pyramid(d / "o.ome.tif", img, n_levels=2),
        "rgba_zlib": write_generic_pyramid(d / "r.tif", rgba, n_levels=2),
    }


# (rows, cols) of level 0 (700 x 1000, tiles of 256): inside one tile, one edge tile, a sub-tile, across a row
# of tiles, a 512 x 512 patch across 3 x 3 tiles (edges included)
REQUESTS = [(slice(256, 512), slice(512, 768)), (slice(512, 700), slice(768, 1000)), (slice(300, 310), slice(5, 9)),
            (slice(250, 260), slice(0, 1000)), (slice(188, 700), slice(488, 1000))]


@pytest.mark.parametrize("kind", ["svs_jpeg", "generic_zlib", "ome_zlib", "rgba_zlib"])
def test_tiff_tile_reader_matches_zarr(files, kind):
    ts = tiffslide.TiffSlide(files[kind])
    try:
        zarr_read = zarr_reader(ts.zarr_group["0"], "YXS")
        fallback_calls = []
        read = tiff_tile_reader(ts.ts_tifffile.series[0].levels[0],
                                lambda r, c: fallback_calls.append((r, c)) or zarr_read(r, c))
        for rows, cols in REQUESTS:
            block = read(rows, cols)
            assert block.shape == (rows.stop - rows.start, cols.stop - cols.start, 3) and block.dtype == np.uint8
            np.testing.assert_array_equal(block, zarr_read(rows, cols))
        assert fallback_calls == []  # every tile decoded straight from the file
    finally:
        ts.close()


def test_tiff_tile_reader_concurrent_with_zarr(files):
    """Direct reads and zarr reads share the file handle from many threads: every block stays right."""
    ts = tiffslide.TiffSlide(files["svs_jpeg"])
    try:
        zarr_read = zarr_reader(ts.zarr_group["0"], "YXS")
        read = tiff_tile_reader(ts.ts_tifffile.series[0].levels[0], zarr_read)
        expected = [zarr_read(r, c) for r, c in REQUESTS]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda k: read(*REQUESTS[k % 4]), range(64)))
        for k, block in enumerate(got):
            np.testing.assert_array_equal(block, expected[k % 4])
    finally:
        ts.close()


def test_tiff_tile_reader_locks_the_file_itself(files):
    """Without any zarr store around, the reader switches tifffile's file lock on and reads right from many threads."""
    with tifffile.TiffFile(files["generic_zlib"]) as tf:
        fh = tf.filehandle
        assert not fh.has_lock  # tifffile's default: a dummy lock, seek + read unguarded
        level = tf.series[0].levels[0]
        read = tiff_tile_reader(level, lambda r, c: pytest.fail("fallback called"))
        assert fh.has_lock
        image = level.asarray()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda k: read(*REQUESTS[k % 5]), range(80)))
        for k, block in enumerate(got):
            rows, cols = REQUESTS[k % 5]
            np.testing.assert_array_equal(block, image[rows, cols])


def test_tiff_tile_reader_keeps_an_existing_lock(files):
    """The lock zarr already reads under stays the one the reader uses: both serialise on one RLock."""
    with tifffile.TiffFile(files["svs_jpeg"]) as tf:
        tf.filehandle.set_lock(True)
        lock = tf.filehandle.lock
        tiff_tile_reader(tf.series[0].levels[0], lambda r, c: pytest.fail("fallback called"))
        assert tf.filehandle.lock is lock


def test_tiff_tile_reader_leaves_stripped_files_to_fallback(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, pattern_image(300, 200, seed=5), photometric="rgb", rowsperstrip=16)
    with tifffile.TiffFile(path) as tf:
        def fallback(r, c):
            return np.zeros((0, 0, 3), np.uint8)
        assert tiff_tile_reader(tf.series[0].levels[0], fallback) is fallback


def test_lazy_levels_reduce_level0_once_and_keep_the_overview(monkeypatch):
    """Lazy levels of a flat image: each is the block mean of level 0; the overview decodes level 0 once, ever."""
    from care_core.wsi import _tiles
    from care_core.wsi._tiles import add_lazy_levels

    monkeypatch.setattr(_tiles, "OVERVIEW_PX", 1000)  # level 2 (650 px) is an overview, level 1 (1300 px) stays lazy
    image = pattern_image(2600, 1200, seed=5)
    level0, calls = logged_level(image, (256, 256))
    levels = add_lazy_levels([level0])
    assert [lv.shape[:2] for lv in levels] == [(1200, 2600), (600, 1300), (300, 650)]
    assert all(lv.chunksize[:2] == (256, 256) for lv in levels)
    expected = np.rint(image[:1200, :2600].reshape(300, 4, 650, 4, 3).mean(axis=(1, 3))).astype(np.uint8)
    np.testing.assert_array_equal(levels[2].compute(), expected)
    assert len(calls) == 5 * 11  # every tile of level 0 once (5 x 11 tiles of 256)
    np.testing.assert_array_equal(levels[2][100:200, 300:400].compute(), expected[100:200, 300:400])
    assert len(calls) == 5 * 11  # served from memory
    np.testing.assert_array_equal(levels[1][:256, :256].compute(),
                                  np.rint(image[:512, :512].reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))).astype(np.uint8))
    assert len(calls) == 5 * 11 + 4  # a middle level stays lazy: only the 2 x 2 tiles under the view
