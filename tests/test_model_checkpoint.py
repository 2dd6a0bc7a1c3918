"""CARE checkpoints (safetensors + JSON), feature checks, and the opt-in authors' model adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from care_core.errors import CheckpointError, FeatureMismatchError
from care_core.features import PatchFeatures
from care_core.model import CARE, check_features, load_authors_model, load_checkpoint, save_checkpoint
from care_core.model.checkpoint import read_checkpoint_meta
from care_core.model.pair import meta_sha256

SMALL = dict(input_dim=16, embed_dim=32, heads=4, spf_dim=16, k=4, anchor="corner")


def features(dim: int = 16, encoder: str = "stain-texture", mpp: float = 0.5, patch_px: int = 512) -> PatchFeatures:
    rng = np.random.default_rng(0)
    cols, rows = np.meshgrid(np.arange(9), np.arange(7))
    coords = np.stack([cols.ravel(), rows.ravel()], 1) * 1024
    return PatchFeatures(rng.standard_normal((len(coords), dim)).astype(np.float32), coords, 1024,
                         mpp=mpp, patch_px=patch_px, encoder=encoder, slide_path="slide_a.tif")


@pytest.fixture
def saved(tmp_path):
    model = CARE.from_seed(4, **SMALL).eval()
    path = save_checkpoint(model, tmp_path / "ckpt", encoder="stain-texture", feature_mpp=0.5, patch_px=512,
                           extra={"stage": "test"})
    return model, path


def test_round_trip_identical_outputs(saved, tmp_path):
    model, path = saved
    assert path == tmp_path / "ckpt.safetensors" and (tmp_path / "ckpt.json").is_file()
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    assert meta["config"]["k"] == 4 and meta["config"]["anchor"] == "corner" and meta["input_dim"] == 16
    assert meta["encoder"] == "stain-texture" and meta["extra"] == {"stage": "test"} and len(meta["tensors_sha256"]) == 64
    loaded = load_checkpoint(tmp_path / "ckpt.json")  # either file of the pair names the checkpoint
    assert loaded.config == model.config
    a, b = model.encode(features()), loaded.encode(features())
    np.testing.assert_array_equal(a.slide_embedding, b.slide_embedding)
    np.testing.assert_array_equal(a.patch_region, b.patch_region)
    assert loaded.checkpoint_meta.encoder == "stain-texture"
    assert not list(tmp_path.glob(".*"))


def test_tampered_tensors_are_refused(saved, tmp_path):
    _, path = saved
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"sha256 .* but .*\.json records"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.json not found: a CARE checkpoint is a .safetensors \+ .json pair"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="format='something-else'"):
        read_checkpoint_meta(tmp_path / "other")


def test_feature_mismatch_messages(saved, tmp_path):
    meta = read_checkpoint_meta(saved[1])
    check_features(meta, features())
    with pytest.raises(FeatureMismatchError, match=r"1024-d \(encoder 'uni_v2'\) but the model expects 16-d"):
        check_features(meta, features(dim=1024, encoder="uni_v2"))
    with pytest.raises(FeatureMismatchError, match=r"encoder 'conch_v15' but 'stain-texture' is required"):
        check_features(meta, features(encoder="conch_v15"))
    with pytest.raises(FeatureMismatchError, match="0.25 µm/px but 0.5 µm/px"):
        check_features(meta, features(mpp=0.25))
    with pytest.raises(FeatureMismatchError, match="224 px but 512 px"):
        check_features(meta, features(patch_px=224))


def test_authors_model_needs_snapshot_and_flag(tmp_path):
    with pytest.raises(CheckpointError, match=r"is not a model-hub snapshot \(no config.json there\)"):
        load_authors_model(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="runs the Python code shipped in that repository.*trust_remote_code=True"):
        load_authors_model(tmp_path)


def test_config_that_cannot_build_a_care_is_a_checkpoint_error(saved, tmp_path):
    _, path = saved
    raw = json.loads(path.with_suffix(".json").read_text())
    raw["config"]["heads"] = 7  # embed_dim 32 is not divisible by 7
    raw["sha256"] = meta_sha256(raw)  # signed as if saved so: the config itself is at fault
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"bad\.json: its config cannot build a CARE \(embed_dim=32 is not divisible"):
        read_checkpoint_meta(tmp_path / "bad")
