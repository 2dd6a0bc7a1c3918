"""Sub-WSI index: DBSCAN + median bisection on hand-made grids, the stored index, stale and mixed inputs."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from care_core.errors import FeatureFileError, FeatureMismatchError, TrainingConfigError
from care_core.features import PatchFeatures, load_features
from care_core.train.subwsi import SubWSIIndex, SubWSIParams, build_subwsi_index, split_subwsis


def block(x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Grid cells (col, row) of a full w x h rectangle at (x0, y0), in raster order."""
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def write(path, grid, *, dim=4, encoder="conch_v15", step=256, seed=0):
    """A feature file whose patch j has features j + [0, 0.25, 0.5, ...] and level-0 coords 1000 + step * grid."""
    feats = np.arange(len(grid), dtype=np.float32)[:, None] + np.arange(dim, dtype=np.float32) / dim + seed
    return PatchFeatures(features=feats, coords=1000 + step * np.asarray(grid), patch_size_level0=step,
                         encoder=encoder).save(path)


def test_bisection_of_a_strip_is_by_rank_along_the_long_axis():
    grid = block(0, 0, 10, 1)
    pieces = split_subwsis(grid, SubWSIParams(max_patches=4, min_patches=1))
    assert [p.tolist() for p in pieces] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]


def test_bisection_cuts_the_longer_axis_at_the_median():
    grid = block(0, 0, 2, 6)  # 2 wide, 6 tall: cut between rows 2 and 3
    top, bottom = split_subwsis(grid, SubWSIParams(max_patches=6, min_patches=1))
    assert set(grid[top, 1]) == {0, 1, 2} and set(grid[bottom, 1]) == {3, 4, 5}
    assert len(top) == len(bottom) == 6


def test_dbscan_joins_diagonal_neighbours_at_eps_1_5_only():
    grid = np.array([[0, 0], [1, 1], [2, 2], [10, 10]])
    default = split_subwsis(grid, SubWSIParams(max_patches=360, min_patches=1))
    assert [p.tolist() for p in default] == [[0, 1, 2], [3]]
    strict = split_subwsis(grid, SubWSIParams(max_patches=360, min_patches=1, eps=1.0))
    assert [p.tolist() for p in strict] == [[0], [1], [2], [3]]


def test_small_fragments_are_dropped_and_noise_too():
    grid = np.concatenate([block(0, 0, 4, 4), block(20, 0, 3, 3), [[40, 40]]])
    pieces = split_subwsis(grid, SubWSIParams(max_patches=360, min_patches=10))
    assert [p.tolist() for p in pieces] == [list(range(16))]
    # min_samples=2: the lone patch is DBSCAN noise even with min_patches=1
    pieces = split_subwsis(grid, SubWSIParams(max_patches=360, min_patches=1, min_samples=2))
    assert sorted(len(p) for p in pieces) == [9, 16]


def test_params_are_checked():
    with pytest.raises(TrainingConfigError, match="min_patches=20, max_patches=10"):
        SubWSIParams(max_patches=10, min_patches=20)
    with pytest.raises(TrainingConfigError, match="eps=0"):
        SubWSIParams(eps=0)


def test_index_round_trip(tmp_path):
    a = write(tmp_path / "feats" / "a.h5", np.concatenate([block(0, 0, 20, 10), block(50, 50, 2, 2)]))
    b = write(tmp_path / "feats" / "b.h5", block(3, 7, 5, 5))
    index = build_subwsi_index([a, b], tmp_path / "index" / "idx.h5", max_patches=120, min_patches=16)
    # a: 200 patches -> 100 + 100 (cut at col 10), its 4-patch island dropped; b: 25 patches
    assert len(index) == 3 and index.n_slides == 2
    assert [index.slide_of(i) for i in range(3)] == [0, 0, 1]
    assert index.sizes.tolist() == [100, 100, 25]
    assert index.extent.tolist() == [[10, 10], [10, 10], [5, 5]]
    grid_a = load_features(a).grid_indices()
    assert set(map(tuple, grid_a[index.patches(0)])) == set(map(tuple, block(0, 0, 10, 10)))
    assert index.patches(2).tolist() == list(range(25))
    assert index.patches(-1).tolist() == list(range(25))
    assert index.encoder == "conch_v15" and index.dim == 4
    assert index.params == SubWSIParams(max_patches=120, min_patches=16)
    with pytest.raises(IndexError, match="out of range"):
        index.patches(3)
    with h5py.File(tmp_path / "index" / "idx.h5") as f:  # stored relative to the index file
        assert [p.decode() for p in f["slides/path"][()]] == ["../feats/a.h5", "../feats/b.h5"]
    assert not [p for p in (tmp_path / "index").iterdir() if p.name != "idx.h5"]  # no temp file left


def test_index_is_reused_not_rebuilt_unless_asked(tmp_path):
    a = write(tmp_path / "a.h5", block(0, 0, 6, 6))
    out = tmp_path / "idx.h5"
    build_subwsi_index([a], out)
    os.utime(out, ns=(1, 1))
    again = build_subwsi_index([a], out)
    assert out.stat().st_mtime_ns == 1 and len(again) == 1
    with pytest.raises(TrainingConfigError, match="other feature files or parameters; pass overwrite=True"):
        build_subwsi_index([a], out, min_patches=20)
    rebuilt = build_subwsi_index([a], out, min_patches=20, overwrite=True)
    assert rebuilt.params.min_patches == 20 and out.stat().st_mtime_ns != 1


def test_moved_cohort_loads_through_relative_paths(tmp_path):
    a = write(tmp_path / "c" / "a.h5", block(0, 0, 5, 5))
    build_subwsi_index([a], tmp_path / "c" / "idx.h5")
    (tmp_path / "c").rename(tmp_path / "moved")
    index = SubWSIIndex.load(tmp_path / "moved" / "idx.h5")
    assert index.slide_paths == [(tmp_path / "moved" / "a.h5").resolve()]
    assert index.patches(0).tolist() == list(range(25))


def test_changed_or_missing_feature_file_is_refused(tmp_path):
    a = write(tmp_path / "a.h5", block(0, 0, 5, 5))
    b = write(tmp_path / "b.h5", block(0, 0, 5, 5))
    out = tmp_path / "idx.h5"
    build_subwsi_index([a, b], out)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: same size, other mtime
    with pytest.raises(TrainingConfigError, match=r"a\.h5 changed on disk"):
        SubWSIIndex.load(out)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    SubWSIIndex.load(out)
    write(tmp_path / "b.h5", block(0, 0, 6, 6))  # re-extracted: other size
    with pytest.raises(TrainingConfigError, match=r"b\.h5 changed on disk .* rebuild the index"):
        SubWSIIndex.load(out)
    os.remove(a)
    with pytest.raises(TrainingConfigError, match=r"a\.h5: feature file of sub-WSI index .* is missing"):
        SubWSIIndex.load(out)
    assert len(SubWSIIndex.load(out, check_files=False)) == 2


def test_mixed_encoders_or_dims_name_both_files(tmp_path):
    a = write(tmp_path / "a.h5", block(0, 0, 5, 5))
    b = write(tmp_path / "b.h5", block(0, 0, 5, 5), encoder="uni_v2")
    c = write(tmp_path / "c.h5", block(0, 0, 5, 5), dim=8)
    d = write(tmp_path / "d.h5", block(0, 0, 5, 5), encoder="CONCH-v15")  # same encoder, other spelling
    with pytest.raises(FeatureMismatchError, match=r"b\.h5 \('uni_v2', 4-d\) and .*a\.h5 \('conch_v15', 4-d\)"):
        build_subwsi_index([a, b], tmp_path / "idx.h5")
    with pytest.raises(FeatureMismatchError, match=r"c\.h5 .*8-d\) and .*a\.h5"):
        build_subwsi_index([a, c], tmp_path / "idx.h5")
    assert len(build_subwsi_index([a, d], tmp_path / "idx.h5")) == 2


def test_bad_cohorts(tmp_path):
    a = write(tmp_path / "a.h5", block(0, 0, 3, 3))
    with pytest.raises(TrainingConfigError, match=r"no sub-WSI of >= 16 patches in 1 feature file\(s\); lower min_patches"):
        build_subwsi_index([a], tmp_path / "idx.h5")
    assert not (tmp_path / "idx.h5").exists()
    with pytest.raises(TrainingConfigError, match="listed twice"):
        build_subwsi_index([a, tmp_path / "." / "a.h5"], tmp_path / "idx.h5")
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(TrainingConfigError, match=r"x\.npy: Stage I reads patch rows from \.h5"):
        build_subwsi_index([tmp_path / "x.npy"], tmp_path / "idx.h5")
    with pytest.raises(FeatureFileError, match="does not exist"):
        build_subwsi_index([tmp_path / "nope.h5"], tmp_path / "idx.h5")
    with pytest.raises(TrainingConfigError, match="not a sub-WSI index"):
        SubWSIIndex.load(a)
