"""Stage I dataset (rows read from the .h5, in DataLoader workers) and views (crops, augmentations, masks)."""

from __future__ import annotations

import dataclasses
import pickle

import h5py
import numpy as np
import pytest

from care_core.errors import FeatureFileError, TrainingConfigError
from care_core.features import PatchFeatures, load_features
from care_core.train.data import SubWSIDataset, ViewConfig, check_view_config, crop, make_views, sample_rng
from care_core.train.subwsi import build_subwsi_index

OFF = dict(flip_prob=0.0, rotate=False, dropout_prob=0.0, brightness_prob=0.0, contrast_prob=0.0,
           posterize_prob=0.0, mask_prob=0.0)  # every augmentation off: views are plain crops


def block(x0: int, y0: int, w: int, h: int) -> np.ndarray:
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@pytest.fixture
def cohort(tmp_path):
    """Two slides, shuffled rows: a 30x20 block (two sub-WSIs of 300) and a 12x12 one; feature j, c = 10 j + c."""
    rng = np.random.default_rng(0)
    files = []
    for name, grid in (("a.h5", block(0, 0, 30, 20)), ("b.h5", block(5, 5, 12, 12))):
        grid = grid[rng.permutation(len(grid))]
        feats = (10 * np.arange(len(grid))[:, None] + np.arange(6)).astype(np.float16)
        files.append(PatchFeatures(features=feats, coords=512 * grid + 77, patch_size_level0=512,
                                   encoder="stain-texture").save(tmp_path / name))
    return build_subwsi_index(files, tmp_path / "idx.h5", max_patches=360)


def test_items_are_the_indexed_rows_of_the_feature_file(cohort):
    ds = SubWSIDataset(cohort, seed=0)
    assert len(ds) == 3
    for i in range(3):
        pf = load_features(cohort.slide_paths[cohort.slide_of(i)])
        rows = cohort.patches(i)
        x, g = ds[i]
        assert x.dtype == np.float32 and g.dtype == np.int64 and len(x) == len(g) == len(rows)
        np.testing.assert_array_equal(x, pf.features[rows].astype(np.float32))
        np.testing.assert_array_equal(g, pf.grid_indices()[rows])
    assert [len(ds[i][0]) for i in range(3)] == [300, 300, 144]


def test_foreign_layout_leading_axis_float_coords_overlapping_patches(tmp_path):
    grid = block(0, 0, 5, 4)
    with h5py.File(tmp_path / "clam.h5", "w") as f:  # CLAM/TRIDENT: [1, N, D], float coords, 512 px patches every 256
        f["features"] = np.arange(20 * 3, dtype=np.float32).reshape(1, 20, 3)
        f["coords"] = 256.0 * grid[::-1] + 1000.3
        f["coords"].attrs["patch_size_level0"] = 512
    index = build_subwsi_index([tmp_path / "clam.h5"], tmp_path / "idx.h5")
    x, g = SubWSIDataset(index)[0]
    np.testing.assert_array_equal(x, np.arange(60, dtype=np.float32).reshape(20, 3))
    np.testing.assert_array_equal(g, grid[::-1])
    np.testing.assert_array_equal(g, load_features(tmp_path / "clam.h5").grid_indices())


def test_file_changed_after_loading_is_refused_when_opened(cohort):
    ds = SubWSIDataset(cohort)
    ds[0]
    path = cohort.slide_paths[1]
    PatchFeatures(features=np.zeros((4, 6), np.float32), coords=512 * block(0, 0, 2, 2), patch_size_level0=512,
                  encoder="stain-texture").save(path)
    with pytest.raises(TrainingConfigError, match=r"b\.h5 changed on disk"):
        ds[2]


def test_nan_rows_are_refused_naming_the_file(tmp_path):
    feats = np.ones((25, 3), np.float32)
    feats[7, 1] = np.nan
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:  # written past the store, which refuses NaN itself
        f["features"] = feats
        f["coords"] = 256 * block(0, 0, 5, 5)
    with pytest.raises(FeatureFileError, match=r"nan\.h5.*: 1 of 25 patch feature rows hold NaN"):
        build_subwsi_index([path], tmp_path / "idx.h5")
    assert not (tmp_path / "idx.h5").exists()


def test_open_files_are_capped_and_state_drops_handles(cohort):
    ds = SubWSIDataset(cohort, max_open_files=1)
    ds[0], ds[2], ds[1]
    assert len(ds._files) == 1
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert not clone._files and np.array_equal(clone[2][0], ds[2][0])
    ds.close()


def test_dataloader_workers_read_the_same_items(cohort):
    torch = pytest.importorskip("torch")
    ds = SubWSIDataset(cohort, seed=0)
    expected = [ds[i] for i in range(3)]  # the parent opens files before the fork: workers reopen theirs
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    got = list(loader)
    for (x, g), (ex, eg) in zip(got, expected):
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(g.numpy(), eg)


def test_sample_rng_depends_on_seed_epoch_and_index_only():
    draw = lambda *a: sample_rng(*a).integers(1 << 30, size=4).tolist()  # noqa: E731
    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert len({str(draw(1, 2, 3)), str(draw(1, 2, 4)), str(draw(1, 3, 3)), str(draw(2, 2, 3))}) == 4


def test_same_generator_state_gives_identical_views():
    grid = block(0, 0, 25, 25)
    feats = np.random.default_rng(0).normal(size=(len(grid), 8)).astype(np.float32)
    a = make_views(feats, grid, ViewConfig(mask_prob=1.0), sample_rng(7, 0, 5))
    b = make_views(feats, grid, ViewConfig(mask_prob=1.0), sample_rng(7, 0, 5))
    c = make_views(feats, grid, ViewConfig(mask_prob=1.0), sample_rng(7, 1, 5))
    assert len(a) == 8 and a.n_global == 2
    for name in ("features", "grids", "rows", "masks"):
        assert all(np.array_equal(u, v) for u, v in zip(getattr(a, name), getattr(b, name)))
    assert not all(np.array_equal(u, v) for u, v in zip(a.rows, c.rows))


def test_plain_crops_are_windows_of_the_drawn_size():
    grid = block(0, 0, 40, 30)
    feats = np.arange(len(grid) * 2, dtype=np.float32).reshape(-1, 2)
    cfg = ViewConfig(global_size=(14, 20), local_size=(6, 10), **OFF)
    views = make_views(feats, grid, cfg, np.random.default_rng(0))
    for v in range(len(views)):
        rows, g = views.rows[v], views.grids[v]
        lo, hi = (14, 20) if v < 2 else (6, 10)
        w, h = np.ptp(grid[rows], axis=0) + 1
        assert lo <= w <= hi and lo <= h <= hi and len(rows) == w * h  # a full window of a full grid
        np.testing.assert_array_equal(views.features[v], feats[rows])
        np.testing.assert_array_equal(g, grid[rows] - grid[rows].min(axis=0))
        assert not views.masks[v].any()


def test_crop_larger_than_the_sub_wsi_is_the_whole_sub_wsi():
    grid = block(3, 4, 5, 6)
    feats = np.ones((30, 4), np.float32)
    views = make_views(feats, grid, ViewConfig(**OFF, global_min_patches=1, local_size=(6, 10)), np.random.default_rng(0))
    assert all(r.tolist() == list(range(30)) for r in views.rows)


def test_crop_redraws_until_the_window_holds_enough_patches():
    # a dense 10x10 block and a far sparse diagonal: windows anchored on the diagonal hold few patches
    grid = np.concatenate([block(0, 0, 10, 10), np.stack([np.arange(20, 60), np.arange(20, 60)], axis=1)])
    for seed in range(10):
        rows = crop(grid, (10, 10), 50, 20, np.random.default_rng(seed))
        assert len(rows) >= 50
    rows = crop(grid, (10, 10), 500, 3, np.random.default_rng(0))  # impossible: the fullest of 3 windows
    assert 10 <= len(rows) <= 100


def test_augmentations_apply_with_probability_one():
    grid = block(0, 0, 8, 8)
    feats = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32) + 3
    base = dict(OFF, global_size=(20, 20), local_size=(20, 20), global_min_patches=1, local_min_patches=1)
    bright = make_views(feats, grid, ViewConfig(**{**base, "brightness_prob": 1.0}), np.random.default_rng(0))
    ratio = bright.features[0] / feats
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-5)  # one scale per channel
    assert np.all((ratio > 0.8 - 1e-6) & (ratio < 1.2 + 1e-6)) and np.ptp(ratio[0]) > 0
    poster = make_views(feats, grid, ViewConfig(**{**base, "posterize_prob": 1.0, "posterize_levels": (2, 2)}),
                        np.random.default_rng(0))
    assert all(len(np.unique(poster.features[0][:, c])) == 2 for c in range(5))
    drop = make_views(feats, grid, ViewConfig(**{**base, "dropout_prob": 1.0, "dropout_ratio": (0.25, 0.25)}),
                      np.random.default_rng(0))
    assert [len(r) for r in drop.rows] == [48] * 8
    turned = make_views(feats[:24], block(0, 0, 8, 3), ViewConfig(**{**base, "rotate": True}), np.random.default_rng(0))
    assert {tuple(g.max(axis=0)) for g in turned.grids} == {(7, 2), (2, 7)}


def test_global_views_are_masked_locals_never():
    grid = block(0, 0, 30, 30)
    feats = np.zeros((900, 3), np.float32)
    views = make_views(feats, grid, ViewConfig(mask_prob=1.0, mask_ratio=(0.3, 0.3)), np.random.default_rng(0))
    for v in range(len(views)):
        n, m = len(views.rows[v]), views.masks[v]
        assert len(m) == n and m.sum() == (round(0.3 * n) if v < 2 else 0)


def test_view_config_refuses_impossible_values():
    assert ViewConfig(global_size=[10, 12]).global_size == (10, 12)  # lists from YAML/TOML become tuples
    for bad, match in [
        (dict(mask_prob=1.5), r"mask_prob=1.5 must be a probability"),
        (dict(local_size=(10, 6)), r"local_size=\(10, 6\) must be a range"),
        (dict(global_min_patches=500), r"global_min_patches=500 <= global_size\[1\]\*\*2=400"),
        (dict(posterize_levels=(1, 4)), r"posterize_levels=\(1, 4\) of at least 2"),
        (dict(n_global=0), r"n_global=0 >= 1"),
    ]:
        with pytest.raises(TrainingConfigError, match=match):
            ViewConfig(**bad)
    assert {f.name for f in dataclasses.fields(ViewConfig)} >= {"n_global", "n_local", "global_size", "local_size"}


def test_global_crop_that_fits_no_sub_wsi_is_refused(cohort):
    check_view_config(ViewConfig(), cohort)  # sub-WSIs of 15x20 and 12x12 cells: 14-cell crops are real crops
    with pytest.raises(TrainingConfigError, match=r"idx\.h5: every sub-WSI fits in a 20x20 global crop .* lower global_size"):
        check_view_config(ViewConfig(global_size=(20, 24)), cohort)
    with pytest.raises(TrainingConfigError, match=r"idx\.h5: no sub-WSI has global_min_patches=301 patches \(largest 300\)"):
        check_view_config(ViewConfig(global_size=(14, 20), global_min_patches=301), cohort)
