"""One slide through the whole pipeline (tissue → patch grid → patch features → CARE), as a generator that
yields progress and returns the result: the napari widget drives it from a worker thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

__all__ = ["PipelineProgress", "iter_slide_pipeline"]


@dataclass(frozen=True)
class PipelineProgress:
    """Where the pipeline is: `stage` ("tissue", "features" or "care"), `done` of `total` steps in it."""

    stage: str
    done: int
    total: int


def iter_slide_pipeline(
    slide_path: str | os.PathLike,
    *,
    encoder: str = "stain-texture",
    weights: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    untrained_seed: int = 0,
    mpp: float | None = None,
    target_mpp: float | None = None,
    patch_px: int | None = None,
    min_tissue: float = 0.25,
    stop: threading.Event | None = None,
):
    """Encode one slide with CARE; yields `PipelineProgress`, returns the `SlideEncoding` (None when stopped).

    model: a CARE checkpoint, or None for an untrained released-config CARE (random weights,
    `untrained_seed`) sized to the features. target_mpp / patch_px: the patch grid, by default what the
    checkpoint was trained on, else what the encoder expects. A checkpoint that cannot take this encoder's
    features fails before any slide work. stop: when set, the run ends at the next batch (cleanly, in the
    calling thread) and returns None.
    """
    from care_core.features import PatchFeatures, get_encoder, get_encoder_spec, iter_extract
    from care_core.model import CARE
    from care_core.model.checkpoint import check_features, load_checkpoint
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    spec = get_encoder_spec(encoder)
    care = None if model is None else load_checkpoint(model)
    meta = None if care is None else care.checkpoint_meta
    target_mpp = target_mpp or (meta and meta.feature_mpp) or spec.mpp
    patch_px = patch_px or (meta and meta.patch_px) or spec.patch_px
    if meta is not None:  # what extraction will produce, checked against the checkpoint before it runs
        planned = PatchFeatures(np.zeros((0, spec.dim), np.float32), np.zeros((0, 2)), 1, mpp=target_mpp,
                                patch_px=patch_px, encoder=spec.name, slide_path=str(slide_path))
        check_features(meta, planned)
    patch_encoder = get_encoder(encoder, weights)  # missing weights fail here, before the slide is read
    with open_slide(slide_path, mpp=mpp) as slide:
        yield PipelineProgress("tissue", 0, 1)
        tissue = detect_tissue(slide)
        grid = patch_grid(slide, tissue, target_mpp=target_mpp, patch_px=patch_px, min_tissue=min_tissue)
        yield PipelineProgress("tissue", 1, 1)
        extract = iter_extract(slide, grid, patch_encoder)
        try:
            while True:
                if stop is not None and stop.is_set():
                    return None
                try:
                    step = next(extract)
                except StopIteration as done:
                    features = done.value
                    break
                yield PipelineProgress("features", step.done, step.total)
        finally:
            extract.close()  # stops the readers and encoders in this thread
    if care is None:
        care = CARE.from_seed(untrained_seed, input_dim=features.dim)
    yield PipelineProgress("care", 0, 1)
    encoding = care.encode(features)
    yield PipelineProgress("care", 1, 1)
    return encoding
