"""Layer-data tuples for napari from care_core objects (the one place the reader and widgets build layers)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def region_layers(encoding, mpp: float, *, name: str = "CARE") -> list[LayerData]:
    """CARE's adaptive regions as a labels layer (one cell per patch; label = region id + 1) and the ROI outline.

    Both align with `slide_layer` of the same slide: world units are µm, level-0 pixel x sits at x · mpp.
    """
    from care_core.regions import label_raster, region_table, roi_geometry

    step = encoding.patch_size_level0
    origin = encoding.coords.min(axis=0)  # level-0 (x, y) of grid cell (0, 0) (PatchFeatures.grid_indices)
    cell_um = step * mpp
    rows = region_table(encoding, patch_side_um=encoding.patch_side_um)
    blank = {"id": -1, "is_roi": False}  # row 0 describes label 0 (no region); row i describes region i - 1
    features = {c: [blank.get(c, np.nan)] + [r[c] for r in rows] for c in rows[0]}
    labels = (
        label_raster(encoding.patch_region, encoding.grid) + 1,
        {
            "name": f"{name} regions",
            "scale": (cell_um, cell_um),
            "translate": ((origin[1] + (step - 1) / 2) * mpp, (origin[0] + (step - 1) / 2) * mpp),
            "units": ("µm", "µm"),
            "opacity": 0.45,
            "features": features,
            "metadata": {"roi": int(encoding.roi), "n_regions": int(encoding.n_regions)},
        },
        "labels",
    )
    poly, _ = roi_geometry(encoding)
    rings = list(poly.geoms) if hasattr(poly, "geoms") else [poly]
    outlines = [(np.asarray(p.exterior.coords)[:, ::-1] - 0.5) * mpp for p in rings]  # (row, col) in µm
    roi = (
        outlines,
        {
            "name": f"{name} ROI",
            "shape_type": "polygon",
            "edge_color": "yellow",
            "face_color": "transparent",
            "edge_width": cell_um / 4,
            "units": ("µm", "µm"),
        },
        "shapes",
    )
    return [labels, roi]
