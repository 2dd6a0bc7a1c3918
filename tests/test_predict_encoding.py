"""`HeadPrediction` on `SlideEncoding`: saved and loaded by the npz, old files still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from care_core.model.encoding import HeadPrediction, SlideEncoding


def _encoding(n_regions: int = 3) -> SlideEncoding:
    rng = np.random.default_rng(0)
    return SlideEncoding(
        slide_embedding=rng.normal(size=8).astype(np.float32),
        region_embeddings=rng.normal(size=(n_regions, 8)).astype(np.float32),
        patch_region=np.array([0, 1, 2, 2], dtype=np.int64),
        pi=np.full(n_regions, 1 / n_regions, np.float32),
        alpha=np.full(n_regions, 1 / n_regions, np.float32),
        beta=np.full(n_regions, 1 / n_regions, np.float32),
        roi=1,
        coords=np.array([[0, 0], [512, 0], [0, 512], [512, 512]], dtype=np.int64),
        patch_size_level0=512,
        meta={"encoder": "stain-texture"},
    )


def test_predictions_round_trip(tmp_path):
    enc = _encoding()
    enc.predictions = [
        HeadPrediction("tumour", ("normal", "tumour"), np.array([0.25, 0.75]),
                       np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])),
        HeadPrediction("survival", ("risk",), np.array([1.5]), None),
    ]
    back = SlideEncoding.load_npz(enc.save_npz(tmp_path / "a_encoding.npz"))
    assert [p.head for p in back.predictions] == ["tumour", "survival"]
    assert back.predictions[0].classes == ("normal", "tumour")
    assert back.predictions[0].slide_proba.dtype == np.float32
    np.testing.assert_array_equal(back.predictions[0].slide_proba, np.float32([0.25, 0.75]))
    np.testing.assert_array_equal(back.predictions[0].region_proba, np.float32([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]))
    assert back.predictions[0].slide_class == "tumour"
    np.testing.assert_array_equal(back.predictions[0].region_class, [0, 0, 1])
    assert back.predictions[1].classes == ("risk",) and back.predictions[1].region_proba is None
    np.testing.assert_array_equal(back.predictions[1].slide_proba, np.float32([1.5]))


def test_encoding_without_predictions_round_trips_empty(tmp_path):
    back = SlideEncoding.load_npz(_encoding().save_npz(tmp_path / "b_encoding.npz"))
    assert back.predictions == []


def test_npz_written_before_predictions_still_loads(tmp_path):
    """A file in the earlier layout (no predictions_json key) loads with no predictions."""
    enc = _encoding()
    path = tmp_path / "old_encoding.npz"
    arrays = {k: getattr(enc, k) for k in ("slide_embedding", "region_embeddings", "patch_region", "pi",
                                           "alpha", "beta", "coords")}
    arrays["scalars_json"] = np.array(json.dumps({"roi": 1, "rsl": None, "rsl_loss": None,
                                                  "patch_size_level0": 512, "mpp": None, "patch_px": None}))
    arrays["meta_json"] = np.array(json.dumps({"encoder": "stain-texture"}))
    np.savez(path, **arrays)
    back = SlideEncoding.load_npz(path)
    assert back.predictions == [] and back.roi == 1
    np.testing.assert_array_equal(back.slide_embedding, enc.slide_embedding)


def test_head_prediction_checks_shapes():
    with pytest.raises(ValueError, match="slide_proba has shape"):
        HeadPrediction("h", ("a", "b"), np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="region_proba has shape"):
        HeadPrediction("h", ("a", "b"), np.array([1.0, 0.0]), np.zeros((4, 3)))
