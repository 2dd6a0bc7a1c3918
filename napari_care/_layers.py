"""Layer-data tuples for napari from care_core objects (the one place the reader and widgets build layers)."""

from __future__ import annotations

from typing import Any

from care_core.wsi import Slide

LayerData = tuple[Any, dict, str]


def slide_layer(slide: Slide, *, name: str | None = None) -> LayerData:
    """One multiscale RGB image layer over the slide's lazy pyramid; scale in µm when mpp is known."""
    info = slide.info
    mpp = info.mpp
    kwargs: dict[str, Any] = {
        "name": name or _stem(info.path),
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "metadata": {"path": info.path, "mpp": mpp, "vendor": info.vendor, "slide_info": info},
    }
    if mpp is not None:
        kwargs["scale"] = (mpp, mpp)
        kwargs["units"] = ("µm", "µm")
    return list(slide.levels), kwargs, "image"


def _stem(path: str) -> str:
    from pathlib import Path

    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
