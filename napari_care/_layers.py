"""Layer-data tuples for napari from care_core objects (the one place the reader and widgets build layers).

World units are µm: level-0 pixel (x, y) has its centre at (y · mpp, x · mpp); a level-0 pixel corner
(polygon vertex) at (y - 0.5, x - 0.5) · mpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from care_core.wsi import Slide

__all__ = ["class_color", "slide_layer", "region_layers", "outline_layer", "polygon_outlines", "outline_paths",
           "annotation_layer"]

LayerData = tuple[Any, dict, str]

ROI_SCREEN_PX = 3.0  # outline width on screen, whatever the zoom (the widget rescales it on zoom)


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
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def class_color(index: int) -> tuple[int, int, int]:
    """RGB of a head's class ``index`` in the class layer and its legend (as the exports colour it)."""
    from care_core.regions.export import class_color as exported

    return exported(index)


def _rgba(rgb: tuple[int, int, int], alpha: float = 1.0) -> tuple[float, float, float, float]:
    return rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, alpha


def _cell_placement(encoding, mpp: float) -> dict:
    """scale / translate of a patch-grid raster: cell (0, 0) is the top-left patch."""
    step = encoding.patch_size_level0
    origin = encoding.coords.min(axis=0)  # level-0 (x, y) of grid cell (0, 0) (PatchFeatures.grid_indices)
    cell_um = step * mpp
    return {
        "scale": (cell_um, cell_um),
        "translate": ((origin[1] + (step - 1) / 2) * mpp, (origin[0] + (step - 1) / 2) * mpp),
        "units": ("µm", "µm"),
    }


def polygon_outlines(geometry, mpp: float) -> list[np.ndarray]:
    """Every ring (exteriors and holes) of a shapely (Multi)Polygon in level-0 px as (row, col) µm arrays."""
    parts = list(geometry.geoms) if hasattr(geometry, "geoms") else [geometry]
    rings = [ring for p in parts for ring in (p.exterior, *p.interiors)]
    return [(np.asarray(r.coords)[:-1, ::-1] - 0.5) * mpp for r in rings]


def outline_paths(geometry, mpp: float) -> list[np.ndarray]:
    """Every ring of a level-0 (Multi)Polygon as a closed path in world µm, from and back to its first edge's
    midpoint (so the two ends meet in a straight line, without a notch). Outlines are drawn as paths, not as
    polygons with a transparent face: napari triangulates a polygon's face on every update (20-40 ms in Python
    for a region's outline), a path only its edges."""
    paths = []
    for ring in polygon_outlines(geometry, mpp):
        mid = (ring[0] + ring[1]) / 2
        paths.append(np.vstack([mid, ring[1:], ring[:1], mid]))
    return paths


def outline_layer(geometry, mpp: float, *, name: str, color, kind: str, zoom: float = 1.0) -> LayerData:
    """A thin outline (``ROI_SCREEN_PX`` wide on screen at ``zoom``) of a level-0 polygon: closed paths."""
    return (
        outline_paths(geometry, mpp),
        {
            "name": name,
            "shape_type": "path",
            "edge_color": [_rgba(color)],
            "edge_width": ROI_SCREEN_PX / max(zoom, 1e-9),
            "units": ("µm", "µm"),
            "metadata": {"care_kind": kind},
        },
        "shapes",
    )


def region_layers(encoding, mpp: float, *, name: str, tissue_mask: np.ndarray | None = None,
                  tissue_downsample: float | None = None, zoom: float = 1.0,
                  head_titles: dict[str, str] | None = None) -> list[LayerData]:
    """CARE's result as layers over the slide: the tissue mask (hidden), π per region (hidden heatmap),
    each head's predicted class per region (hidden), the regions (label = region id + 1, one stable colour
    per region) and the ROI outline. ``name`` prefixes every layer name; ``metadata["care_kind"]`` says
    what a layer is, so a re-run can replace it. ``head_titles``: {head name: readable title} for layer names."""
    from care_core.regions import label_raster, region_color, roi_geometry
    from care_core.regions.export import ROI_COLOR

    place = _cell_placement(encoding, mpp)
    raster = label_raster(encoding.patch_region, encoding.grid)
    cell = raster >= 0
    layers: list[LayerData] = []
    if tissue_mask is not None:
        ds = float(tissue_downsample)
        layers.append((
            tissue_mask.astype(np.uint8),
            {"name": f"{name} tissue", "scale": (ds * mpp, ds * mpp), "translate": ((ds - 1) / 2 * mpp,) * 2,
             "units": ("µm", "µm"), "opacity": 0.3, "visible": False,
             "colormap": {0: (0, 0, 0, 0), 1: (0.1, 0.8, 0.3, 1.0), None: (0, 0, 0, 0)},
             "metadata": {"care_kind": "tissue"}},
            "labels",
        ))
    pi_map = np.full(raster.shape, np.nan, np.float32)
    pi_map[cell] = np.asarray(encoding.pi, np.float32)[raster[cell]]
    layers.append((
        pi_map,
        {"name": f"{name} π", **place, "colormap": "inferno", "opacity": 0.7, "visible": False,
         "contrast_limits": (0.0, float(np.max(encoding.pi)) or 1.0), "metadata": {"care_kind": "pi"}},
        "image",
    ))
    for pred in getattr(encoding, "predictions", None) or []:
        if pred.region_proba is None or pred.classes == ("risk",):
            continue
        classes = np.full(raster.shape, 0, np.int32)
        classes[cell] = pred.region_class[raster[cell]] + 1
        colormap = {0: (0, 0, 0, 0), None: (0, 0, 0, 0)}
        colormap.update({i + 1: _rgba(class_color(i)) for i in range(len(pred.classes))})
        layers.append((
            classes,
            {"name": f"{name} {(head_titles or {}).get(pred.head, pred.head)}", **place, "opacity": 0.5, "visible": False, "colormap": colormap,
             "metadata": {"care_kind": "class", "head": pred.head, "classes": pred.classes}},
            "labels",
        ))
    colormap = {0: (0, 0, 0, 0), None: (0, 0, 0, 0)}
    colormap.update({r + 1: _rgba(region_color(r)) for r in range(encoding.n_regions)})
    layers.append((
        raster + 1,
        {"name": f"{name} regions", **place, "opacity": 0.45, "colormap": colormap,
         "metadata": {"care_kind": "regions", "roi": int(encoding.roi), "n_regions": int(encoding.n_regions)}},
        "labels",
    ))
    poly, _ = roi_geometry(encoding)
    layers.append(outline_layer(poly, mpp, name=f"{name} ROI", color=ROI_COLOR, kind="roi", zoom=zoom))
    return layers


def annotation_layer(annotations, mpp: float | None, *, name: str) -> LayerData:
    """Imported annotations as a Shapes layer (every ring of every polygon, in the file's colours) over the
    slide; ``mpp`` None places them in level-0 px (a slide without pixel size)."""
    scale = 1.0 if mpp is None else float(mpp)
    data, edge, labels = [], [], []
    for ann in annotations:
        rings = polygon_outlines(ann.geometry, scale)
        data.extend(rings)
        edge.extend([_rgba(ann.color or (0, 200, 255))] * len(rings))
        labels.extend([ann.classification or ann.name or ""] * len(rings))
    return (
        data,
        {"name": name, "shape_type": "polygon", "edge_color": edge or "cyan", "face_color": "transparent",
         "edge_width": 2 * scale, "features": {"class": labels}, "units": ("µm", "µm") if mpp else ("px", "px"),
         "metadata": {"care_kind": "annotations", "annotations": list(annotations)}},
        "shapes",
    )
