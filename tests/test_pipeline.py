"""care_core.pipeline: one slide through tissue → patch grid → features → CARE, with progress."""

from __future__ import annotations

import pytest

from care_core.errors import FeatureMismatchError
from care_core.model import CARE
from care_core.model.checkpoint import save_checkpoint
from care_core.pipeline import PipelineProgress, iter_slide_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:grid patches are 256 px")  # small patches keep the test fast


def _run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_progress_stages_and_result(small_sample):
    steps, enc = _run(iter_slide_pipeline(small_sample.slide_path, patch_px=256))
    assert steps[:2] == [PipelineProgress("tissue", 0, 1), PipelineProgress("tissue", 1, 1)]
    assert steps[-2:] == [PipelineProgress("care", 0, 1), PipelineProgress("care", 1, 1)]
    feature_steps = [s for s in steps if s.stage == "features"]
    n = feature_steps[-1].total
    assert feature_steps[-1].done == n and [s.done for s in feature_steps] == sorted(s.done for s in feature_steps)
    assert enc.patch_region.shape == (n,) and enc.slide_embedding.shape == (512,)
    assert enc.patch_size_level0 == 256 and enc.meta["encoder"] == "stain-texture"
    # an untrained run is reproducible from its seed
    _, again = _run(iter_slide_pipeline(small_sample.slide_path, patch_px=256))
    assert (again.slide_embedding == enc.slide_embedding).all()


def test_checkpoint_for_another_encoder_is_refused(small_sample, tmp_path):
    ckpt = save_checkpoint(CARE.from_seed(0, input_dim=230, embed_dim=32, heads=2, spf_dim=16), tmp_path / "care",
                           encoder="uni_v2", feature_mpp=0.5, patch_px=256)
    with pytest.raises(FeatureMismatchError, match="uni_v2.*stain-texture|stain-texture.*uni_v2"):
        _run(iter_slide_pipeline(small_sample.slide_path, model=ckpt, patch_px=256))
