"""Faults 2, 8 and 11: bad feature values and coords are refused naming the file; TRIDENT files both ways."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from care_core.errors import FeatureFileError, FeatureMismatchError
from care_core.features import PatchFeatures, check_compatible, load_features


def _grid(n_cols: int, n_rows: int, step: int, x0: int = 2048, y0: int = 1024) -> np.ndarray:
    cols, rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    return np.stack([cols.ravel(), rows.ravel()], 1) * step + (x0, y0)


def _write_h5(path, features, coords, *, root=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
        f.attrs.update(root or {})
    return path


@pytest.mark.parametrize(("bad", "what"), [(np.nan, "nan"), (np.inf, "inf"), (-1e30, "1e30")])
def test_nan_inf_and_absurd_features_are_refused_naming_the_file(tmp_path, bad, what):
    feats = np.ones((12, 8), np.float32)
    feats[[3, 7], 2] = bad
    path = _write_h5(tmp_path / f"{what}.h5", feats, _grid(4, 3, 512), root={"slide_path": "inside.svs"})
    with pytest.raises(FeatureFileError) as info:
        load_features(path)
    assert str(info.value) == (
        f"{path}: 2 of 12 patch feature rows hold NaN, Inf or values beyond ±1e+06 (first bad row 3); "
        "these are not usable features: re-extract it")


def test_features_with_nan_are_never_saved(tmp_path):
    pf = PatchFeatures(np.full((2, 4), np.nan, np.float32), [[0, 0], [256, 0]], 256, encoder="enc", slide_path="s.svs")
    with pytest.raises(FeatureFileError, match=r"^s\.svs: 2 of 2 .* check encoder 'enc' and its weights"):
        pf.save(tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []


def test_negative_coords_are_refused_and_off_grid_coords_warn(tmp_path):
    coords = _grid(3, 2, 256, x0=-512, y0=0)
    neg = _write_h5(tmp_path / "neg.h5", np.ones((6, 4), np.float32), coords)
    with pytest.raises(FeatureFileError, match=re.escape(
            f"{neg}: 4 of 6 patches have negative level-0 coords (down to x=-512, y=0)")):
        load_features(neg)
    coords = _grid(3, 2, 256)
    coords[4] += (100, 0)
    off = _write_h5(tmp_path / "off.h5", np.ones((6, 4), np.float32), coords)
    with pytest.warns(UserWarning, match=re.escape(f"{off}: 1 of 6 patches lie off the 256-px grid (by up to 100 "
                                                   "level-0 px); each is placed in its nearest grid cell")):
        load_features(off, patch_size_level0=256)


def test_messages_name_the_h5_not_the_slide_recorded_inside(tmp_path):
    coords = _grid(2, 2, 512)
    coords[1] = coords[0] + 10  # two patches in one cell
    dup = PatchFeatures(np.ones((4, 4), np.float32), coords, 512, slide_path="inside.svs").save(tmp_path / "dup.h5")
    pf = load_features(dup)  # 10 px is within rounding of the grid: no warning, but a collision
    with pytest.raises(FeatureFileError, match=rf"^{re.escape(str(dup))}: several patches fall in one grid cell"):
        pf.grid_indices()
    ok = PatchFeatures(np.ones((4, 4), np.float32), _grid(2, 2, 512), 512, encoder="uni_v2",
                       slide_path="inside.svs").save(tmp_path / "ok.h5")
    with pytest.raises(FeatureMismatchError, match=rf"^{re.escape(str(ok))}: features come from encoder 'uni_v2'"):
        check_compatible(load_features(ok), encoder="conch_v15")


def _write_trident(path, features, coords, *, patch_size=256, level0_mag=40, target_mag=20, overlap=0):
    """A feature file laid out as TRIDENT writes it: chunked resizable datasets, metadata on the datasets."""
    attrs = {
        "features": {"name": "slideA", "savetodir": "features_uni_v2", "encoder": "uni_v2"},
        "coords": {"patch_size": patch_size, "patch_size_level0": patch_size * level0_mag // target_mag,
                   "level0_magnification": level0_mag, "target_magnification": target_mag, "overlap": overlap,
                   "name": "slideA", "savetodir": "patches", "level0_width": 40000, "level0_height": 30000},
    }
    with h5py.File(path, "w") as f:
        for key, val in (("features", features), ("coords", coords)):
            ds = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:], chunks=(1,) + val.shape[1:],
                                  dtype=val.dtype)
            ds[:] = val
            ds.attrs.update(attrs[key])
    return path


def test_trident_file_gives_encoder_name_size_and_mpp_from_its_magnification(tmp_path):
    feats = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    path = _write_trident(tmp_path / "slideA.h5", feats, _grid(3, 2, 512))
    with pytest.warns(UserWarning, match=re.escape(
            f"{path}: no µm/px stored; taking 10 / target_magnification = 0.5 µm/px, as TRIDENT does")):
        pf = load_features(path)
    assert (pf.encoder, pf.slide_path, pf.slide_size_level0) == ("uni_v2", "slideA", (40000, 30000))
    assert (pf.mpp, pf.patch_px, pf.patch_size_level0) == (0.5, 256, 512)
    np.testing.assert_array_equal(pf.features, feats)
    with pytest.raises(FeatureMismatchError, match="encoder 'uni_v2' but 'conch_v15' is required"):
        check_compatible(pf, encoder="conch_v15")
    with pytest.raises(FeatureMismatchError, match="encoded at 0.5 µm/px but 0.25 µm/px is required"):
        check_compatible(pf, mpp=0.25)


def test_trident_overlapping_patches_use_the_spacing_as_grid_step(tmp_path):
    # 256 px at 20x with 128 px overlap on a 40x slide: 512 level-0 px patches every 256 level-0 px
    path = _write_trident(tmp_path / "ov.h5", np.ones((12, 4), np.float32), _grid(4, 3, 256), overlap=128)
    with pytest.warns(UserWarning, match="10 / target_magnification"):
        pf = load_features(path)
    assert pf.patch_size_level0 == 256 and pf.extra["patch_side_level0"] == 512
    assert pf.grid_indices().max(axis=0).tolist() == [3, 2]
    back = pf.save(tmp_path / "ours.h5")
    with h5py.File(back) as f:
        a = f["coords"].attrs
        assert (a["patch_size_level0"], a["overlap"], a["patch_size"]) == (512, 128, 256)
    again = load_features(back)
    assert again.patch_size_level0 == 256 and again.extra["patch_side_level0"] == 512


def test_our_file_has_what_trident_reads(tmp_path):
    pf = PatchFeatures(np.ones((6, 4), np.float32), _grid(3, 2, 1024), 1024, mpp=0.5, patch_px=512,
                       encoder="conch_v15", slide_path="/data/slide 7.svs", slide_size_level0=(9000, 7000))
    path = pf.save(tmp_path / "s7.h5")
    with h5py.File(path) as f:
        coords_attrs, feat_attrs = dict(f["coords"].attrs), dict(f["features"].attrs)
    # TRIDENT needs patch_size, level0_magnification and target_magnification on coords; its patcher derives
    # the level-0 patch side from them, its slide encoders read patch_size_level0
    assert {k: coords_attrs[k] for k in ("patch_size", "level0_magnification", "target_magnification",
                                          "patch_size_level0", "overlap", "level0_width", "level0_height", "name")} == {
        "patch_size": 512, "level0_magnification": 40, "target_magnification": 20, "patch_size_level0": 1024,
        "overlap": 0, "level0_width": 9000, "level0_height": 7000, "name": "slide 7"}
    assert coords_attrs["patch_size"] * coords_attrs["level0_magnification"] // coords_attrs["target_magnification"] == 1024
    assert (feat_attrs["encoder"], feat_attrs["name"]) == ("conch_v15", "slide 7")
    back = load_features(path)
    assert (back.mpp, back.patch_size_level0, back.encoder, back.slide_path) == (0.5, 1024, "conch_v15", "/data/slide 7.svs")
    assert "mpp_source" not in back.extra


def test_ill_typed_attribute_is_one_feature_file_error(tmp_path):
    path = _write_h5(tmp_path / "typed.h5", np.ones((4, 4), np.float32), _grid(2, 2, 256),
                     root={"format": "napari-care-features/1", "mpp": "fast", "extra_json": "{}"})
    with pytest.raises(FeatureFileError, match=rf"^{re.escape(repr(str(path)))}: an attribute is ill-typed"):
        load_features(path)


def test_float16_features_are_checked_without_overflow_warnings(tmp_path):
    import warnings

    feats = np.ones((6, 8), np.float16)
    path = _write_h5(tmp_path / "half.h5", feats, _grid(3, 2, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" would fail here
        assert load_features(path).features.dtype == np.float16
    feats[4, 0] = np.inf
    with pytest.raises(FeatureFileError, match="1 of 6 patch feature rows hold NaN, Inf"):
        load_features(_write_h5(tmp_path / "half_inf.h5", feats, _grid(3, 2, 256)))
