"""`encode_paths`: feature files -> per-slide embeddings, region tables, GeoJSON and encodings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import care_core.model.checkpoint as checkpoint
from care_core.encode import OUTPUT_SUFFIXES, encode_paths
from care_core.errors import FeatureFileError, FeatureMismatchError, MissingWeightsError
from care_core.features import PatchFeatures, load_features
from care_core.model import CARE, SlideEncoding, save_checkpoint

SMALL = dict(input_dim=16, embed_dim=32, heads=4, spf_dim=16)


def write_features(folder, name: str, n_side: int, seed: int, encoder: str = "stain-texture"):
    rng = np.random.default_rng(seed)
    cols, rows = np.meshgrid(np.arange(n_side), np.arange(n_side - 3))
    coords = np.stack([cols.ravel(), rows.ravel()], 1) * 512 + 4096
    pf = PatchFeatures(rng.standard_normal((len(coords), 16)).astype(np.float32), coords, 512,
                       mpp=0.5, patch_px=512, encoder=encoder, slide_path=f"{name}.tif")
    return pf.save(folder / f"{name}.h5")


@pytest.fixture
def setup(tmp_path):
    feats = tmp_path / "features"
    feats.mkdir()
    write_features(feats, "slide_b", 14, 1)
    write_features(feats, "slide_a", 11, 0)
    model = CARE.from_seed(0, **SMALL).eval()
    ckpt = save_checkpoint(model, tmp_path / "care", encoder="stain-texture", feature_mpp=0.5, patch_px=512)
    return tmp_path, feats, model, ckpt


def test_encode_folder_with_checkpoint(setup):
    tmp, feats, model, ckpt = setup
    out = tmp / "out"
    written = encode_paths([feats], ckpt, out)
    expected = [out / f"{stem}{suffix}" for stem in ("slide_a", "slide_b") for suffix in OUTPUT_SUFFIXES]
    assert written == expected and all(p.is_file() for p in written)
    direct = model.encode(load_features(feats / "slide_a.h5"))
    np.testing.assert_allclose(np.load(out / "slide_a_slide.npy"), direct.slide_embedding, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "slide_a_roi.npy"), direct.roi_embedding, atol=1e-6)
    enc = SlideEncoding.load_npz(out / "slide_a_encoding.npz")
    np.testing.assert_array_equal(enc.patch_region, direct.patch_region)
    assert enc.roi == direct.roi and enc.mpp == 0.5 and enc.meta["checkpoint_sha256"]
    gj = json.loads((out / "slide_a_regions.geojson").read_text())
    assert len(gj["features"]) == direct.n_regions
    assert (out / "slide_a_regions.csv").read_text().count("\n") == direct.n_regions + 1
    assert not list(out.glob(".*"))


def test_encode_refuses_features_from_another_encoder(setup):
    tmp, feats, _, ckpt = setup
    other = write_features(tmp, "slide_c", 9, 2, encoder="conch_v15")
    with pytest.raises(FeatureMismatchError, match="encoder 'conch_v15' but 'stain-texture' is required"):
        encode_paths([other], ckpt, tmp / "out")


def test_encode_without_model_or_inputs(setup, monkeypatch):
    tmp, feats, model, _ = setup
    monkeypatch.setattr(checkpoint, "DEMO_CHECKPOINT", tmp / "absent" / "care_demo")
    with pytest.raises(MissingWeightsError, match="demo checkpoint .*care_demo.safetensors is not installed; pass --model"):
        encode_paths([feats], None, tmp / "out")
    with pytest.raises(FeatureFileError, match="does not exist"):
        encode_paths([tmp / "nothing.h5"], model, tmp / "out")
    (tmp / "empty").mkdir()
    with pytest.raises(FeatureFileError, match="holds no feature files"):
        encode_paths([tmp / "empty"], model, tmp / "out")


def test_empty_feature_file_is_skipped_with_a_warning(tmp_path):
    feats = tmp_path / "feats"
    PatchFeatures(np.zeros((0, 16), np.float32), np.zeros((0, 2)), 256, encoder="e").save(feats / "empty.h5")
    PatchFeatures(np.ones((4, 16), np.float32), [[0, 0], [256, 0], [0, 256], [256, 256]], 256, encoder="e").save(
        feats / "full.h5")
    model = CARE.from_seed(0, input_dim=16, embed_dim=32, heads=2, spf_dim=16)
    with pytest.warns(UserWarning, match=r"empty\.h5: no patches"):
        written = encode_paths([feats], model, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(f"full{s}" for s in OUTPUT_SUFFIXES)


def test_feature_files_with_the_same_name_are_refused(tmp_path):
    from care_core.encode import feature_files

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.h5").write_bytes(b"")
    with pytest.raises(FeatureFileError, match=r"share a name.*separate --out"):
        feature_files([tmp_path / "a", tmp_path / "b"])
