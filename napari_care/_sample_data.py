"""napari sample data: the synthetic H&E slide (written once into the user's cache) and its compartments."""

from __future__ import annotations

import os
from pathlib import Path

from ._layers import LayerData, slide_layer

SAMPLE_SIZE_PX = (24000, 18000)  # (width, height) at 0.5 µm/px: about 12 × 9 mm; written once (about 30 s), then cached


def sample_cache_dir() -> Path:
    """Where the sample slide is kept: $NAPARI_CARE_CACHE, else $XDG_CACHE_HOME/napari-care, else ~/.cache/napari-care."""
    if os.environ.get("NAPARI_CARE_CACHE"):
        return Path(os.environ["NAPARI_CARE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "napari-care"


def sample_slide() -> list[LayerData]:
    """The synthetic H&E slide (SAMPLE_SIZE_PX at 0.5 µm/px) plus its ground-truth compartments as a labels layer."""
    from care_core.synth import ensure_sample_slide
    from care_core.wsi import open_slide

    width_px, height_px = SAMPLE_SIZE_PX
    sample = ensure_sample_slide(sample_cache_dir(), width_px=width_px, height_px=height_px)
    slide = open_slide(sample.slide_path)
    image = slide_layer(slide, name="sample slide")
    mpp = slide.info.mpp * sample.mask_downsample
    centre = (sample.mask_downsample - 1) / 2 * slide.info.mpp  # mask pixel 0 covers level-0 px 0..15
    labels = (
        sample.read_mask(),
        {
            "name": "ground-truth compartments",
            "scale": (mpp, mpp),
            "translate": (centre, centre),
            "units": ("µm", "µm"),
            "opacity": 0.35,
            "visible": False,
            "metadata": {"compartments": sample.compartments},
        },
        "labels",
    )
    return [image, labels]
