"""The feature store: our .h5 (TRIDENT layout), TRIDENT/CLAM .h5, the CARE authors' .npy, compatibility checks."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from care_core import __version__
from care_core.errors import FeatureFileError, FeatureMismatchError
from care_core.features import PatchFeatures, check_compatible, load_features
from care_core.features.importers import infer_step_level0


def _grid_coords(n_cols: int, n_rows: int, step: int, x0: int = 1000, y0: int = 2000) -> np.ndarray:
    ys, xs = np.mgrid[0:n_rows, 0:n_cols]
    return np.stack([x0 + xs.ravel() * step, y0 + ys.ravel() * step], axis=1).astype(np.int64)


def _features(n: int = 6, d: int = 4, encoder: str = "stain-texture") -> PatchFeatures:
    rng = np.random.default_rng(0)
    return PatchFeatures(
        features=rng.normal(size=(n, d)).astype(np.float32),
        coords=_grid_coords(3, n // 3, 512),
        patch_size_level0=512,
        mpp=0.5,
        patch_px=512,
        encoder=encoder,
        weights_sha256="ab" * 32,
        slide_path="/data/slide.svs",
        slide_size_level0=(40000, 30000),
        extra={"read_level": 1},
    )


def test_save_writes_trident_layout_and_round_trips(tmp_path):
    pf = _features()
    out = pf.save(tmp_path / "sub" / "slide.h5")
    assert out == tmp_path / "sub" / "slide.h5"
    assert sorted(p.name for p in out.parent.iterdir()) == ["slide.h5"]  # no temp file left behind
    with h5py.File(out, "r") as f:
        assert f["features"].shape == (6, 4) and f["features"].dtype == np.float32
        assert f["coords"].dtype == np.int64
        assert f["coords"].attrs["patch_size_level0"] == 512
        assert f.attrs["encoder"] == "stain-texture"
        assert f.attrs["care_version"] == __version__
        assert f.attrs["mpp"] == 0.5
    back = load_features(out)
    np.testing.assert_array_equal(back.features, pf.features)
    np.testing.assert_array_equal(back.coords, pf.coords)
    assert (back.patch_size_level0, back.mpp, back.patch_px) == (512, 0.5, 512)
    assert (back.encoder, back.weights_sha256, back.slide_path) == (pf.encoder, pf.weights_sha256, pf.slide_path)
    assert back.slide_size_level0 == (40000, 30000)
    assert back.extra == {"read_level": 1}
    np.testing.assert_array_equal(back.grid_indices(), np.stack([np.tile([0, 1, 2], 2), np.repeat([0, 1], 3)], 1))


def test_save_is_atomic_when_writing_fails(tmp_path):
    target = tmp_path / "slide.h5"
    _features().save(target)
    before = target.read_bytes()
    bad = _features()
    bad.features = np.array([[object()] * 4] * 6, dtype=object)  # h5py cannot store object arrays
    with pytest.raises(TypeError):
        bad.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["slide.h5"]


def test_trident_file_loads(tmp_path):
    path = tmp_path / "trident.h5"
    coords = _grid_coords(4, 2, 448)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((8, 5), np.float32))
        ds = f.create_dataset("coords", data=coords)
        ds.attrs["patch_size_level0"] = 448
        ds.attrs["patch_size"] = 224
    pf = load_features(path)
    assert (pf.n_patches, pf.dim, pf.patch_size_level0, pf.patch_px, pf.encoder, pf.mpp) == (8, 5, 448, 224, "", None)
    np.testing.assert_array_equal(pf.coords, coords)


@pytest.mark.parametrize("batched", [False, True])
def test_clam_file_infers_step_from_coords(tmp_path, batched):
    coords = _grid_coords(5, 3, 256)[[0, 1, 3, 4, 6, 9, 12, 14]]  # gaps: differences 256, 512, 768 occur
    feats = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[None] if batched else feats)
        f.create_dataset("coords", data=coords)
    pf = load_features(path)
    assert pf.patch_size_level0 == 256
    np.testing.assert_array_equal(pf.features, feats)
    assert load_features(path, patch_size_level0=1024).patch_size_level0 == 1024


def test_infer_step_prefers_standard_sizes_then_most_common():
    xy = np.array([[0, 0], [512, 0], [1024, 0], [1100, 0], [0, 512]])  # diffs 512, 512, 76 (x), 512 (y)
    assert infer_step_level0(xy) == 512
    assert infer_step_level0(np.array([[0, 0], [300, 0], [600, 0], [700, 0]])) == 300  # no standard size
    with pytest.raises(FeatureFileError, match="pass patch_size_level0="):
        infer_step_level0(np.array([[5, 5]]))


def _write_care_npy(path, names, feats):
    np.save(path, np.array({"feature": feats, "index": names, "inst_label": [-1] * len(names)}, dtype=object),
            allow_pickle=True)


def test_care_npy_needs_allow_pickle_and_parses_names(tmp_path):
    path = tmp_path / "care.npy"
    names = ["100_200_1024.png", "612_200_1024.png", "100_712_1024.png", "1124_712_1024.png"]
    feats = np.eye(4, dtype=np.float32)
    _write_care_npy(path, names, feats)
    with pytest.raises(FeatureFileError, match=r"allow_pickle=True \(CLI: --allow-pickle\)") as err:
        load_features(path)
    assert "arbitrary code" in str(err.value)
    pf = load_features(path, allow_pickle=True)
    np.testing.assert_array_equal(pf.coords, [[100, 200], [612, 200], [100, 712], [1124, 712]])
    assert pf.patch_size_level0 == 512  # from the coordinates, not the "_1024" in the names
    assert pf.extra["name_patch_size"] == [1024]
    np.testing.assert_array_equal(pf.features, feats)


def test_care_npy_bad_names_and_bad_objects(tmp_path):
    path = tmp_path / "bad.npy"
    _write_care_npy(path, ["patch_a.png"], np.zeros((1, 2), np.float32))
    with pytest.raises(FeatureFileError, match="'patch_a.png' is not of the form 'x_y_size.png'"):
        load_features(path, allow_pickle=True)
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(FeatureFileError, match="expected a pickled dict"):
        load_features(path, allow_pickle=True)


def test_real_conch_sample_loads_and_round_trips(conch_sample_path, tmp_path):
    pf = load_features(conch_sample_path, allow_pickle=True)
    assert pf.features.shape == (349, 768) and pf.features.dtype == np.float32
    assert pf.patch_size_level0 == 512
    with open(conch_sample_path, "rb") as f:
        raw = np.load(f, allow_pickle=True).item()
    np.testing.assert_array_equal(pf.features, raw["feature"])
    x, y = (int(v) for v in raw["index"][0].split("_")[:2])
    assert tuple(pf.coords[0]) == (x, y)
    pf.encoder = "conch_v15"
    back = load_features(pf.save(tmp_path / "19579.h5"))
    np.testing.assert_array_equal(back.features, pf.features)
    np.testing.assert_array_equal(back.coords, pf.coords)
    assert (back.patch_size_level0, back.encoder) == (512, "conch_v15")
    assert back.grid_indices().max(axis=0).tolist() == list(((pf.coords - pf.coords.min(0)) // 512).max(0))
    check_compatible(back, dim=768, encoder="conch_v15")
    with pytest.raises(FeatureMismatchError, match="768-d .* expects 1024-d"):
        check_compatible(back, dim=1024)


def test_garbage_truncated_and_incomplete_h5(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(FeatureFileError, match="garbage.h5' is not a readable HDF5 file"):
        load_features(garbage)
    good = _features().save(tmp_path / "good.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(FeatureFileError, match="truncated.h5'"):
        load_features(truncated)
    partial = tmp_path / "partial.h5"
    with h5py.File(partial, "w") as f:
        f.create_dataset("feats", data=np.zeros((2, 2)))
    with pytest.raises(FeatureFileError, match=r"lacks dataset\(s\) \['features', 'coords'\] \(found \['feats'\]\)"):
        load_features(partial)
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_features(tmp_path / "missing.h5")
    with pytest.raises(FeatureFileError, match="unknown feature file type '.pt'"):
        (tmp_path / "x.pt").write_bytes(pickle.dumps(1))
        load_features(tmp_path / "x.pt")


def test_check_compatible_names_both_sides():
    pf = _features(encoder="uni_v2")
    check_compatible(pf, dim=4, encoder="UNI-v2")  # case and dash/underscore do not matter
    with pytest.raises(FeatureMismatchError, match=r"are 4-d \(encoder 'uni_v2'\) but the model expects 768-d"):
        check_compatible(pf, dim=768)
    with pytest.raises(FeatureMismatchError, match="from encoder 'uni_v2' but 'conch_v15' is required"):
        check_compatible(pf, encoder="conch_v15")
    with pytest.raises(FeatureMismatchError, match="encoded at 0.5 µm/px but 1 µm/px"):
        check_compatible(pf, mpp=1.0)
    with pytest.raises(FeatureMismatchError, match="patches are 512 px but 224 px"):
        check_compatible(pf, patch_px=224)
    pf.encoder = ""
    with pytest.warns(UserWarning, match="does not record its encoder"):
        check_compatible(pf, encoder="conch_v15")


def test_empty_features_round_trip(tmp_path):
    pf = PatchFeatures(np.zeros((0, 230), np.float32), np.zeros((0, 2)), patch_size_level0=512, encoder="stain-texture")
    back = load_features(pf.save(tmp_path / "empty.h5"))
    assert back.features.shape == (0, 230) and back.coords.shape == (0, 2)
    assert back.grid_indices().shape == (0, 2)


def test_grid_indices_round_offsets_and_refuse_collisions():
    from care_core.errors import FeatureFileError

    # a grid that does not start at a multiple of the step (CLAM contours each have their own origin)
    feats = PatchFeatures(np.zeros((3, 2), np.float32), [[300, 100], [812, 100], [300, 612]], 512)
    np.testing.assert_array_equal(feats.grid_indices(), [[0, 0], [1, 0], [0, 1]])
    # coords 1 px off the lattice still land in their own cell
    np.testing.assert_array_equal(PatchFeatures(np.zeros((2, 2)), [[0, 0], [513, 1]], 512).grid_indices(), [[0, 0], [1, 0]])
    with pytest.raises(FeatureFileError, match="several patches fall in one grid cell of 512 level-0 px"):
        PatchFeatures(np.zeros((2, 2)), [[0, 0], [100, 0]], 512).grid_indices()
