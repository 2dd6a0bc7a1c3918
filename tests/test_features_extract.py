"""Streaming extraction: reads at the right level, exact features in grid order, progress, bounded prefetch."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from PIL import Image
from slide_factory import tissue_image, write_svs

from care_core.features import ExtractProgress, extract_features, get_encoder, iter_extract
from care_core.wsi import PatchGrid, open_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """2048² px at 0.25 µm/px, 3 levels (ds 1, 2, 4), lossless so pixels can be compared."""
    img = tissue_image(2048, 2048, [(1024, 1024, 900)], seed=3)
    return write_svs(tmp_path_factory.mktemp("slides") / "s.svs", img, mpp=0.25, n_levels=3, compression="zlib")


def _grid(coords, size_level0: int, patch_px: int, level: int) -> PatchGrid:
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    return PatchGrid(coords=coords, patch_size_level0=size_level0, patch_px=patch_px, target_mpp=0.5, level=level,
                     tissue_fraction=np.ones(len(coords)))


class CountingSlide:
    """A slide whose `read_region` calls are counted (thread-safe)."""

    def __init__(self, slide) -> None:
        self._slide, self.reads, self._lock = slide, 0, threading.Lock()

    def __getattr__(self, name):
        return getattr(self._slide, name)

    def read_region(self, location, level, size):
        with self._lock:
            self.reads += 1
        return self._slide.read_region(location, level, size)


def test_stain_texture_features_equal_encoding_the_patches_read_at_level_1(slide_path):
    coords = [(0, 0), (1024, 0), (0, 1024), (1024, 1024)]
    enc = get_encoder("stain-texture", device="cpu")
    with open_slide(slide_path) as slide:
        grid = _grid(coords, 1024, 512, level=1)  # 512 px at 0.5 µm/px = 1024 level-0 px at 0.25 µm/px
        pf = extract_features(slide, grid, enc, batch_size=3, num_workers=2)
        expected = enc.embed(np.stack([slide.read_region(c, 1, (512, 512)) for c in coords]))
        size = slide.dimensions
    np.testing.assert_array_equal(pf.features, expected)
    np.testing.assert_array_equal(pf.coords, coords)
    assert (pf.patch_size_level0, pf.mpp, pf.patch_px, pf.encoder, pf.weights_sha256) == (1024, 0.5, 512, "stain-texture", "")
    assert pf.slide_path == str(slide_path) and pf.slide_size_level0 == size
    assert pf.extra["read_level"] == 1


def test_vit_reads_the_coarsest_level_that_serves_and_resizes(slide_path):
    import torch

    torch.manual_seed(0)
    enc = get_encoder("timm:vit_tiny_patch16_224", random_init=True, device="cpu")
    ys, xs = np.mgrid[0:2048:512, 0:2048:512]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    with open_slide(slide_path) as slide, pytest.warns(UserWarning, match="expects 224 px at 0.5 µm/px"):
        # 256 px at 0.5 µm/px = 512 level-0 px; a 224 px input is served by level 1 (256 px), not level 0
        pf = extract_features(slide, _grid(coords, 512, 256, level=0), enc, batch_size=5, num_workers=2)
        patches = [np.asarray(Image.fromarray(slide.read_region(tuple(c), 1, (256, 256))).resize(
            (224, 224), Image.Resampling.BICUBIC)) for c in coords]
    assert pf.extra["read_level"] == 1
    np.testing.assert_allclose(pf.features, enc.embed(np.stack(patches)), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:grid patches are")
def test_progress_events_return_value_and_bounded_prefetch(slide_path):
    ys, xs = np.mgrid[0:2048:256, 0:2048:256]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)  # 64 patches
    enc = get_encoder("stain-texture", device="cpu")
    with open_slide(slide_path) as raw:
        slide = CountingSlide(raw)
        gen = iter_extract(slide, _grid(coords, 256, 128, level=0), enc, batch_size=4, num_workers=2, prefetch_batches=1)
        events = []
        while True:
            try:
                events.append(next(gen))
            except StopIteration as stop:
                pf = stop.value
                break
            assert slide.reads - events[-1].done <= (2 + 1) * 4  # never more than the batches in flight
    assert [e.done for e in events] == list(range(4, 65, 4)) and {e.total for e in events} == {64}
    assert all(isinstance(e, ExtractProgress) and e.patches_per_s > 0 for e in events)
    assert pf.features.shape == (64, enc.dim) and slide.reads == 64
    np.testing.assert_array_equal(pf.coords, coords)


@pytest.mark.filterwarnings("ignore:grid patches are")
def test_closing_the_generator_stops_reading(slide_path):
    ys, xs = np.mgrid[0:2048:256, 0:2048:256]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    with open_slide(slide_path) as raw:
        slide = CountingSlide(raw)
        gen = iter_extract(slide, _grid(coords, 256, 128, level=0), "stain-texture", device="cpu", batch_size=2,
                           num_workers=1, prefetch_batches=1)
        first = next(gen)
        gen.close()
        reads_at_close = slide.reads
    assert first == ExtractProgress(2, 64, first.patches_per_s)
    assert reads_at_close <= 2 * 2 + 2 and slide.reads == reads_at_close


def test_empty_grid_and_bad_arguments(slide_path):
    enc = get_encoder("stain-texture", device="cpu")
    with open_slide(slide_path) as slide:
        pf = extract_features(slide, _grid(np.zeros((0, 2)), 1024, 512, level=1), enc)
        assert pf.features.shape == (0, enc.dim) and pf.coords.shape == (0, 2)
        with pytest.raises(ValueError, match="device='cuda' but encoder 'stain-texture' is on 'cpu'"):
            extract_features(slide, _grid([(0, 0)], 1024, 512, level=1), enc, device="cuda")
        with pytest.raises(ValueError, match="batch_size=0 and num_workers=2 must be >= 1"):
            extract_features(slide, _grid([(0, 0)], 1024, 512, level=1), enc, batch_size=0)


def test_events_count_matches_batches(slide_path):
    coords = [(0, 0), (1024, 0), (0, 1024)]
    seen: list[ExtractProgress] = []
    with open_slide(slide_path) as slide:
        extract_features(slide, _grid(coords, 1024, 512, level=1), "stain-texture", device="cpu", batch_size=2,
                         progress=seen.append)
    assert [(e.done, e.total) for e in seen] == [(2, 3), (3, 3)] and len(seen) == math.ceil(3 / 2)


@pytest.mark.filterwarnings("ignore:grid patches are")
def test_stain_texture_encodes_in_its_own_threads_one_part_of_each_batch_per_worker(slide_path):
    coords = np.stack([np.arange(10) * 256, np.zeros(10, np.int64)], 1)
    enc = get_encoder("stain-texture", device="cpu")
    calls, embed = [], enc.embed
    enc.embed = lambda x: calls.append((threading.current_thread().name, len(x))) or embed(x)
    with open_slide(slide_path) as slide:
        pf = extract_features(slide, _grid(coords, 256, 128, level=0), enc, batch_size=4, num_workers=2)
    assert sorted(n for _, n in calls) == [1, 1, 2, 2, 2, 2]  # batches of 4, 4, 2 in halves
    assert all(name.startswith("care-embed") for name, _ in calls)
    np.testing.assert_array_equal(pf.coords, coords)
    assert pf.features.shape == (10, enc.dim) and np.isfinite(pf.features).all()
