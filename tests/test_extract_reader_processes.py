"""Extraction with reader="processes": the same features as the thread reader, read in other processes, their
errors and deaths reported in one line, and no process left behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile

import numpy as np
import pytest
from slide_factory import tissue_image, write_svs

from care_core.features import extract_features, get_encoder, iter_extract
from care_core.features.extract import PatchReader
from care_core.wsi import open_slide
from test_features_extract import CountingSlide, _grid

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are")


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """1024² px at 0.25 µm/px, 2 levels, lossless."""
    img = tissue_image(1024, 1024, [(512, 512, 450)], seed=5)
    return write_svs(tmp_path_factory.mktemp("slides") / "s.svs", img, mpp=0.25, n_levels=2, compression="zlib")


def coords(n: int, step: int = 128) -> np.ndarray:
    ys, xs = np.mgrid[0:1024:step, 0:1024:step]
    return np.stack([xs.ravel(), ys.ravel()], 1)[:n]


def test_processes_give_the_thread_readers_features_without_reading_in_this_process(slide_path):
    enc = get_encoder("stain-texture", device="cpu")
    grid = _grid(coords(21), 128, 64, level=0)
    with open_slide(slide_path) as raw:
        threads = extract_features(raw, grid, enc, batch_size=4, num_workers=2)
        slide = CountingSlide(raw)
        procs = extract_features(slide, grid, enc, batch_size=4, num_workers=2, reader="processes")
        assert slide.reads == 0  # every patch was read by a worker process from its own copy of the slide
    np.testing.assert_array_equal(procs.features, threads.features)
    np.testing.assert_array_equal(procs.coords, threads.coords)
    assert procs.extra == threads.extra and not multiprocessing.active_children()


def test_a_recipe_reads_the_same_patches_as_its_reader(slide_path):
    with open_slide(slide_path) as slide:
        reader = PatchReader(slide, _grid(coords(5), 256, 96, level=0), 96, "bicubic")
        copy = PatchReader.from_recipe(slide, reader.recipe())
        np.testing.assert_array_equal(copy.read(range(5)), reader.read(range(5)))
    assert reader.recipe()["level"] == 1 and reader.recipe()["size_at_level"] == 128  # 256 level-0 px at ds 2


def corrupt_all_but_the_first_tile(path):
    """Garbage in every tile of every level but the first one (which the slide's open-time probe decodes)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        spans = [(o, c) for page in tf.pages if page.is_tiled for o, c in list(zip(page.dataoffsets, page.databytecounts))[1:]]
    raw = bytearray(path.read_bytes())
    for offset, count in spans:
        raw[offset: offset + count] = bytes(count)
    path.write_bytes(bytes(raw))
    return path


def test_a_corrupt_tile_fails_as_it_does_with_threads(tmp_path):
    img = tissue_image(1024, 1024, [(512, 512, 400)], seed=1)
    path = corrupt_all_but_the_first_tile(write_svs(tmp_path / "bad.svs", img, mpp=0.25, n_levels=2, compression="jpeg"))
    grid = _grid([(512, 512), (640, 640)], 128, 64, level=0)
    errors = {}
    with open_slide(path) as slide:
        for reader in ("threads", "processes"):
            with pytest.raises(Exception) as err:
                extract_features(slide, grid, "stain-texture", device="cpu", batch_size=2, num_workers=2, reader=reader)
            errors[reader] = (type(err.value), str(err.value))
    assert errors["processes"] == errors["threads"]
    assert "bad.svs" in errors["threads"][1] or "JPEG" in errors["threads"][1].upper(), errors
    assert not multiprocessing.active_children()


def test_a_reader_process_killed_mid_slide_is_one_line_and_leaves_no_process(slide_path, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the workers hand their patches over
    grid = _grid(coords(64, step=128), 128, 64, level=0)
    with open_slide(slide_path) as slide:
        gen = iter_extract(slide, grid, "stain-texture", device="cpu", batch_size=2, num_workers=2, prefetch_batches=1,
                           reader="processes")
        next(gen)
        workers = multiprocessing.active_children()
        assert len(workers) == 2
        os.kill(workers[0].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError) as err:
            list(gen)
    assert str(err.value) == (f"{slide_path}: a reader process ended abruptly (killed, or out of memory); run again, "
                              "or read with reader='threads'")
    assert not multiprocessing.active_children() and not list(tmp_path.iterdir())


def test_closing_the_generator_ends_the_reader_processes(slide_path):
    with open_slide(slide_path) as slide:
        gen = iter_extract(slide, _grid(coords(64), 128, 64, level=0), "stain-texture", device="cpu", batch_size=2,
                           num_workers=2, reader="processes")
        next(gen)
        assert len(multiprocessing.active_children()) == 2
        gen.close()
    assert not multiprocessing.active_children()


def test_an_unknown_reader_is_refused(slide_path):
    with open_slide(slide_path) as slide, pytest.raises(ValueError, match=r"reader='fibers' is not one of \('threads', 'processes'\)"):
        extract_features(slide, _grid(coords(1), 128, 64, level=0), "stain-texture", device="cpu", reader="fibers")


def _extract_in(slide_path, answers) -> None:
    """In a daemonic process (as a dask worker runs): the process reader's refusal, sent back."""
    try:
        with open_slide(slide_path) as slide:
            extract_features(slide, _grid(coords(2), 128, 64, level=0), "stain-texture", device="cpu",
                             reader="processes")
        answers.put("no error")
    except Exception as exc:  # noqa: BLE001 — the message is the answer
        answers.put(f"{type(exc).__name__}: {exc}")


def test_a_daemonic_process_is_told_to_read_with_threads(slide_path):
    ctx = multiprocessing.get_context("forkserver")
    answers = ctx.Queue()
    child = ctx.Process(target=_extract_in, args=(slide_path, answers), daemon=True, name="worker-1")
    child.start()
    answer = answers.get(timeout=60)
    child.join(timeout=10)
    assert answer == ("ValueError: reader='processes' cannot start processes from worker-1, a daemonic process "
                      "(e.g. a dask worker); use reader='threads' there")
