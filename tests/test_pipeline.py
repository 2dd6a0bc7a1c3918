"""care_core.pipeline: one slide through tissue → patch grid → features → CARE, with progress and a result cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from care_core.errors import FeatureMismatchError
from care_core.model import CARE
from care_core.model.checkpoint import DEMO_CHECKPOINT, read_checkpoint_meta, save_checkpoint
from care_core.pipeline import PipelineProgress, ResultCache, SlideResult, iter_slide_pipeline
from drain import drain

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 256 px")  # small patches keep the test fast

DEMO_WIDTH = read_checkpoint_meta(DEMO_CHECKPOINT).config["embed_dim"]  # what an untrained CARE is built as


def test_progress_stages_and_result(small_sample):
    steps, result = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256))
    assert isinstance(result, SlideResult) and not result.cached and result.cache_dir is None
    enc = result.encoding
    assert steps[:2] == [PipelineProgress("tissue", 0, 1), PipelineProgress("tissue", 1, 1)]
    assert steps[-2:] == [PipelineProgress("care", 0, 1), PipelineProgress("care", 1, 1)]
    feature_steps = [s for s in steps if s.stage == "features"]
    n = feature_steps[-1].total
    assert feature_steps[-1].done == n and [s.done for s in feature_steps] == sorted(s.done for s in feature_steps)
    assert enc.patch_region.shape == (n,) and enc.slide_embedding.shape == (DEMO_WIDTH,)  # the demo's architecture
    assert enc.patch_size_level0 == 256 and enc.meta["encoder"] == "stain-texture"
    assert enc.meta["slide_size_level0"] == [3072, 2048] and enc.meta["slide_mpp"] == 0.5
    assert enc.meta["model"] == "untrained (seed 0)" and enc.predictions == []
    assert result.tissue_mask.dtype == bool and result.tissue_mask.any()
    assert set(result.timings) == {"setup", "tissue", "features", "care"}
    # an untrained run is reproducible from its seed
    _, again = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256))
    assert (again.encoding.slide_embedding == enc.slide_embedding).all()


def test_cache_serves_a_second_run_and_keys_on_settings(small_sample, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    _, cold = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, cache=cache))
    files = sorted(p.name.split("-")[0] for p in cold.cache_dir.iterdir())
    assert files == ["encoding", "features", "tissue"] and cold.cache_dir.parent == cache.root
    steps, warm = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, cache=cache))
    assert [s.stage for s in steps] == ["cache", "cache"] and warm.cached
    np.testing.assert_array_equal(warm.encoding.patch_region, cold.encoding.patch_region)
    np.testing.assert_array_equal(warm.encoding.region_embeddings, cold.encoding.region_embeddings)
    np.testing.assert_array_equal(warm.tissue_mask, cold.tissue_mask)
    assert warm.encoding.meta["slide_size_level0"] == [3072, 2048]
    # another CARE seed reuses the features and runs CARE again
    steps, other = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, untrained_seed=1, cache=cache))
    assert [s.stage for s in steps] == ["cache", "cache", "care", "care"] and not other.cached
    assert not np.array_equal(other.encoding.slide_embedding, cold.encoding.slide_embedding)
    # another grid setting extracts again
    steps, _ = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, min_tissue=0.5, cache=cache))
    assert steps[0].stage == "tissue"
    assert len(list(cold.cache_dir.glob("features-*.h5"))) == 2
    size = cache.size_bytes()
    assert size > 0 and cache.clear() == size and not cache.root.exists() and cache.size_bytes() == 0


def test_stop_returns_none_and_caches_nothing(small_sample, tmp_path):
    stop = threading.Event()
    cache = ResultCache(tmp_path / "cache")
    gen = iter_slide_pipeline(small_sample.slide_path, patch_px=256, cache=cache, stop=stop)
    while not stop.is_set():
        if next(gen).stage == "features":
            stop.set()  # as Cancel does, mid-extraction
    steps, result = drain(gen)
    assert result is None and steps == [] and cache.size_bytes() == 0


def test_checkpoint_for_another_encoder_is_refused(small_sample, tmp_path):
    ckpt = save_checkpoint(CARE.from_seed(0, input_dim=230, embed_dim=32, heads=2, spf_dim=16), tmp_path / "care",
                           encoder="uni_v2", feature_mpp=0.5, patch_px=256)
    with pytest.raises(FeatureMismatchError, match="uni_v2.*stain-texture|stain-texture.*uni_v2"):
        drain(iter_slide_pipeline(small_sample.slide_path, model=ckpt, patch_px=256))


def test_heads_predict_each_region_and_are_cached(small_sample, tmp_path):
    from care_core.errors import HeadError
    from care_core.evaluate import Head

    coef = np.zeros((2, DEMO_WIDTH))
    coef[1, 0] = 1.0  # class "b" scores the first embedding dimension
    head_path = Head(name="kind", kind="linear", input="slide", classes=("a", "b"),
                     arrays={"coef": coef, "intercept": np.array([0.0, np.log(3.0)])}).save(tmp_path / "kind")
    cache = ResultCache(tmp_path / "cache")
    steps, result = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, heads=[head_path], cache=cache))
    assert [s for s in steps if s.stage == "heads"] == [PipelineProgress("heads", 0, 1), PipelineProgress("heads", 1, 1)]
    (pred,) = result.encoding.predictions
    enc = result.encoding
    z = enc.region_embeddings[:, 0].astype(np.float64)
    expected_b = 3 * np.exp(z) / (1 + 3 * np.exp(z))  # softmax of (0, z + ln 3)
    assert pred.head == "kind" and pred.classes == ("a", "b") and pred.region_proba.shape == (enc.n_regions, 2)
    np.testing.assert_allclose(pred.region_proba[:, 1], expected_b, rtol=1e-5)
    np.testing.assert_allclose(pred.slide_proba[1], 3 * np.exp(enc.slide_embedding[0]) / (1 + 3 * np.exp(enc.slide_embedding[0])),
                               rtol=1e-5)
    _, again = drain(iter_slide_pipeline(small_sample.slide_path, patch_px=256, heads=[head_path], cache=cache))
    assert again.cached and again.encoding.predictions[0].classes == ("a", "b")
    np.testing.assert_array_equal(again.encoding.predictions[0].region_proba, pred.region_proba)
    other = Head(name="uni", kind="linear", input="slide", classes=("a", "b"), encoder="uni_v2",
                 arrays={"coef": coef, "intercept": np.zeros(2)}).save(tmp_path / "uni")
    with pytest.raises(HeadError, match="uni_v2"):
        next(iter_slide_pipeline(small_sample.slide_path, patch_px=256, heads=[other]))  # before any slide work


def test_gpu_asked_on_a_machine_without_one(small_sample, monkeypatch):
    import torch

    from care_core.errors import InvalidInputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match="device='cuda' but this machine has no CUDA GPU; choose device 'auto' or 'cpu'"):
        next(iter_slide_pipeline(small_sample.slide_path, device="cuda"))
