"""Heads: safetensors + JSON, no pickle; loading checks; predictions per slide and per region."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from care_core.errors import HeadError
from care_core.evaluate import Head, KNNProbe, LogisticProbe, load_head
from care_core.model.checkpoint import CheckpointMeta
from care_core.model.encoding import SlideEncoding


def _encoding(dim: int = 4) -> SlideEncoding:
    return SlideEncoding(
        slide_embedding=np.array([1.0, 0.0, 0.0, 0.0], np.float32)[:dim],
        region_embeddings=np.array([[2.0, 0, 0, 0], [-2.0, 0, 0, 0], [0.0, 0, 0, 0]], np.float32)[:, :dim],
        patch_region=np.array([0, 0, 1, 2], np.int64),
        pi=np.array([0.2, 0.5, 0.3], np.float32), alpha=np.full(3, 1 / 3, np.float32), beta=np.full(3, 1 / 3, np.float32),
        roi=1,
    )


def _linear() -> Head:
    return Head("tumour", "linear", "slide", ("normal", "tumour"),
                {"coef": np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0]]), "intercept": np.zeros(2)},
                params={"C": 2.0}, model_sha256="a" * 64, encoder="stain-texture")


def test_linear_head_predicts_slide_and_regions():
    pred = _linear().predict(_encoding())
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(pred.slide_proba, [1 - sig(1), sig(1)], rtol=1e-6)
    np.testing.assert_allclose(pred.region_proba[:, 1], sig(np.array([2.0, -2.0, 0.0])), rtol=1e-6)
    assert pred.head == "tumour" and pred.classes == ("normal", "tumour") and pred.slide_class == "tumour"
    roi = Head("t", "linear", "roi", ("normal", "tumour"), _linear().arrays).predict(_encoding())
    np.testing.assert_allclose(roi.slide_proba[1], sig(-2.0), rtol=1e-6)  # the ROI is region 1


def test_mean_head_uses_patch_features_per_region():
    from care_core.features import PatchFeatures

    f = np.array([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [-4.0, 0, 0, 0], [0.0, 0, 0, 0]], np.float32)
    pf = PatchFeatures(f, np.zeros((4, 2)), 512)
    head = Head("m", "linear", "mean", ("a", "b"), _linear().arrays)
    pred = head.predict(_encoding(), pf)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(pred.slide_proba[1], sig(0.0), atol=1e-7)  # mean of column 0 is 0
    np.testing.assert_allclose(pred.region_proba[:, 1], sig(np.array([2.0, -4.0, 0.0])), rtol=1e-6)
    with pytest.raises(HeadError, match="pass the slide's features"):
        head.predict(_encoding())


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 3
    knn = KNNProbe().fit(X, y)
    head = Head("grade", "knn", "slide", ("g1", "g2", "g3"),
                {"mean": knn.mean_, "scale": knn.scale_, "train_x": knn.train_x_, "train_y": knn.train_y_},
                params={"k": knn.k_, "weights": knn.weights_}, protocol="knn", metrics={"weighted_f1": 0.5},
                model_sha256="b" * 64, encoder="conch_v15")
    path = head.save(tmp_path / "heads" / "grade")
    assert path.name == "grade.safetensors" and (tmp_path / "heads" / "grade.json").is_file()
    meta = json.loads((tmp_path / "heads" / "grade.json").read_text())
    assert meta["classes"] == ["g1", "g2", "g3"] and meta["input"] == "slide" and meta["model_sha256"] == "b" * 64
    assert meta["encoder"] == "conch_v15" and meta["params"]["k"] == knn.k_ and meta["input_dim"] == 4
    back = load_head(tmp_path / "heads" / "grade.json")
    np.testing.assert_array_equal(back.predict_inputs(X), knn.predict_proba(X).astype(np.float32))
    assert not list((tmp_path / "heads").glob(".*"))

    lr = LogisticProbe().fit(X, y)
    coef, b = lr.linear_parameters()
    Head("lr", "linear", "roi", ("g1", "g2", "g3"), {"coef": coef, "intercept": b}).save(tmp_path / "lr")
    np.testing.assert_allclose(load_head(tmp_path / "lr").predict_inputs(X), lr.predict_proba(X), atol=1e-6)


def test_cox_head_gives_risk(tmp_path):
    head = Head("os", "cox", "slide", ("risk",), {"coef": np.array([2.0, 0, 0, 0]), "mean": np.array([0.5, 0, 0, 0])})
    pred = load_head(head.save(tmp_path / "os")).predict(_encoding())
    assert pred.classes == ("risk",)
    np.testing.assert_allclose(pred.slide_proba, [1.0])
    np.testing.assert_allclose(pred.region_proba[:, 0], [3.0, -5.0, -1.0])


def test_loading_refuses_broken_or_foreign_files(tmp_path):
    with pytest.raises(HeadError, match="not found: a head is a .safetensors"):
        load_head(tmp_path / "none")
    _linear().save(tmp_path / "h")
    save_file({"coef": np.ones((2, 4)), "intercept": np.zeros(2)}, str(tmp_path / "h.safetensors"))
    with pytest.raises(HeadError, match="do not belong together or one is corrupt"):
        load_head(tmp_path / "h")
    (tmp_path / "c.json").write_text(json.dumps({"format": "care-checkpoint/1"}))
    (tmp_path / "c.safetensors").write_bytes(b"")
    with pytest.raises(HeadError, match="is not a head file"):
        load_head(tmp_path / "c")


def test_head_beside_another_model_or_encoder_names_both():
    head = _linear()
    ok = CheckpointMeta(config={}, input_dim=4, tensors_sha256="a" * 64)
    head.check_compatible(ok, "stain-texture")
    other = CheckpointMeta(config={}, input_dim=4, tensors_sha256="c" * 64)
    with pytest.raises(HeadError, match=r"trained on CARE model aaaaaaaaaaaa… but the model in use is cccccccccccc…"):
        head.check_compatible(other, "stain-texture")
    with pytest.raises(HeadError, match=r"trained on CARE model aaaaaaaaaaaa… .* dddddddddddd…"):
        head.check_compatible(None, "stain-texture", model_sha256="d" * 64)
    with pytest.raises(HeadError, match="expects features of patch encoder 'stain-texture' but these come from 'uni_v2'"):
        head.check_compatible(ok, "uni_v2")
    with pytest.raises(HeadError, match="takes 4-d slide inputs but got 3-d"):
        head.predict(_encoding(3))
