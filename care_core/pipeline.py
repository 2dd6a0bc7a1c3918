"""One slide through the whole pipeline (tissue → patch grid → patch features → CARE), as a generator that
yields progress and returns the result: the CLI's progress bars and the napari widget drive the same code."""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass

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
    target_mpp: float = 0.5,
    patch_px: int = 512,
    min_tissue: float = 0.25,
):
    """Encode one slide with CARE; yields `PipelineProgress`, returns the `SlideEncoding`.

    model: a CARE checkpoint (its expected encoder and feature dim are checked against the features), or
    None for an untrained released-config CARE (random weights, `untrained_seed`) sized to the features.
    """
    from care_core.features import get_encoder, iter_extract
    from care_core.model import CARE
    from care_core.model.checkpoint import check_features, load_checkpoint
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    care = None if model is None else load_checkpoint(model)  # a bad checkpoint fails before any slide work
    with open_slide(slide_path, mpp=mpp) as slide:
        yield PipelineProgress("tissue", 0, 1)
        tissue = detect_tissue(slide)
        grid = patch_grid(slide, tissue, target_mpp=target_mpp, patch_px=patch_px, min_tissue=min_tissue)
        yield PipelineProgress("tissue", 1, 1)
        patch_encoder = get_encoder(encoder, weights)
        features = yield from _features(iter_extract(slide, grid, patch_encoder))
    if care is None:
        care = CARE.from_seed(untrained_seed, input_dim=features.dim)
    else:
        check_features(care.checkpoint_meta, features)
    yield PipelineProgress("care", 0, 1)
    encoding = care.encode(features)
    yield PipelineProgress("care", 1, 1)
    return encoding


def _features(extract: Generator) -> Generator[PipelineProgress, None, object]:
    """Relay extraction progress as pipeline progress; return the `PatchFeatures`."""
    while True:
        try:
            step = next(extract)
        except StopIteration as stop:
            return stop.value
        yield PipelineProgress("features", step.done, step.total)
