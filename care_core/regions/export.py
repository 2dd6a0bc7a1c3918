"""Exporters: QuPath-compatible GeoJSON and a CSV region table, both written atomically."""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import uuid
from pathlib import Path

from care_core._atomic import atomic_path
from care_core.regions.geometry import REGION_COLUMNS, region_polygons, region_table
from care_core.regions.shapes import Annotation, polygonal

__all__ = [
    "region_color", "class_color", "region_tissue_um2", "prediction_columns", "region_annotations",
    "annotations_to_geojson", "to_geojson", "write_geojson", "write_asap", "write_region_csv", "atomic_write_text",
]

ROI_CLASS, REGION_CLASS = "CARE ROI", "CARE region"
ROI_COLOR = (255, 215, 0)  # gold: the region palette leaves out the hues around it
CLASS_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (23, 190, 207), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (255, 127, 14))  # tab10, gold-free first
_ROI_HUE_GAP = (0.05, 0.30)  # hues (0-1) no region colour takes, so no region looks like the ROI


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path


def region_color(region_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per region id (golden-ratio hue steps, skipping the ROI's gold hues)."""
    lo, hi = _ROI_HUE_GAP
    h = (region_id * 0.618033988749895) % 1.0
    h = (hi + h * (1.0 - (hi - lo))) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def prediction_columns(encoding) -> dict[str, list]:
    """Per-region head predictions as table columns: ``<head> class`` and ``<head> p(<class>)`` per class
    (a Cox head: ``<head> risk``). Heads without region predictions add nothing; no heads, no columns."""
    cols: dict[str, list] = {}
    for pred in getattr(encoding, "predictions", None) or []:
        if pred.region_proba is None:
            continue
        if pred.classes == ("risk",):
            cols[f"{pred.head} risk"] = [float(v) for v in pred.region_proba[:, 0]]
            continue
        cols[f"{pred.head} class"] = [pred.classes[i] for i in pred.region_class]
        for j, cls in enumerate(pred.classes):
            cols[f"{pred.head} p({cls})"] = [float(v) for v in pred.region_proba[:, j]]
    return cols


def class_color(index: int) -> tuple[int, int, int]:
    """RGB of a head's class ``index``: the window's class layer and legend, and the exported classifications."""
    return CLASS_COLORS[index % len(CLASS_COLORS)]


def region_tissue_um2(encoding, *, patch_side_um: float | None = None) -> list[float] | None:
    """Tissue area (µm²) of each region: its patches' area times their tissue fraction (``encoding.meta``
    "patch_tissue_fraction", one per patch, as the window records it); None when unknown."""
    import numpy as np

    fraction = encoding.meta.get("patch_tissue_fraction") if encoding.meta else None
    side = encoding.patch_side_um if patch_side_um is None else patch_side_um
    if fraction is None or side is None or len(fraction) != len(encoding.patch_region):
        return None
    sums = np.bincount(encoding.patch_region, weights=np.asarray(fraction, float), minlength=len(encoding.pi))
    return [float(v) * side**2 for v in sums]


def _class_head(encoding):
    """The first head with a class per region (not a risk score), or None."""
    return next((p for p in getattr(encoding, "predictions", None) or []
                 if p.region_proba is not None and p.classes != ("risk",)), None)


def _slide_box(encoding):
    """The slide's level-0 rectangle (shapely), None when the encoding does not record its size."""
    from shapely.geometry import box

    size = (encoding.meta or {}).get("slide_size_level0")
    return None if not size else box(0, 0, float(size[0]), float(size[1]))


def region_annotations(encoding, *, patch_side_um: float | None = None) -> list[Annotation]:
    """One ``Annotation`` per region (level-0 px polygon, clipped to the slide where its size is recorded).

    classification: with a head that gives each region a class, the region's predicted class (its colour as in
    the window's legend); else "CARE ROI" / "CARE region" with the region's colour. properties:
    ``measurements`` (n_patches, pi, alpha, beta, area_um2 (of the patches) when known, tissue_area_um2 when
    the tissue fraction of each patch is recorded, each head's class probabilities and the probability of the
    predicted class), ``predictions`` ({head: predicted class}), ``care_region_id`` and ``is_roi``."""
    rows = region_table(encoding, patch_side_um=patch_side_um)
    polys = region_polygons(encoding.patch_region, encoding.coords, encoding.patch_size_level0)
    slide = _slide_box(encoding)
    tissue = region_tissue_um2(encoding, patch_side_um=patch_side_um)
    preds = prediction_columns(encoding)
    head = _class_head(encoding)
    out = []
    for row, poly in zip(rows, polys):
        rid = row["id"]
        measurements = {k: row[k] for k in ("n_patches", "pi", "alpha", "beta")}
        if row["area_um2"] is not None and math.isfinite(row["area_um2"]):
            measurements["area_um2"] = row["area_um2"]
        if tissue is not None:
            measurements["tissue_area_um2"] = tissue[rid]
        measurements.update({k: v[rid] for k, v in preds.items() if not k.endswith(" class")})
        classes = {k[: -len(" class")]: v[rid] for k, v in preds.items() if k.endswith(" class")}
        props = {"measurements": measurements, "care_region_id": rid, "is_roi": bool(row["is_roi"])}
        if classes:
            props["predictions"] = classes
        classification, color = (ROI_CLASS, ROI_COLOR) if row["is_roi"] else (REGION_CLASS, region_color(rid))
        if head is not None:
            top = int(head.region_proba[rid].argmax())
            classification, color = head.classes[top], class_color(top)
            measurements[f"{head.head} probability"] = float(head.region_proba[rid, top])
        if slide is not None and not slide.contains(poly):
            poly = polygonal(poly.intersection(slide)) or poly
        out.append(Annotation(
            poly,
            classification=classification,
            name=f"{'ROI ' if row['is_roi'] else ''}region {rid}",
            color=color,
            properties=props,
        ))
    return out


def annotations_to_geojson(annotations, *, ids: list[str] | None = None) -> dict:
    """A QuPath-importable GeoJSON FeatureCollection (level-0 px) of ``Annotation`` objects."""
    import shapely

    features = []
    for i, ann in enumerate(annotations):
        props = {"objectType": "annotation"}
        if ann.name is not None:
            props["name"] = ann.name
        if ann.classification is not None:
            props["classification"] = {"name": ann.classification, "color": list(ann.color or (200, 200, 200))}
        props["isLocked"] = False
        props.update(ann.properties)
        feature = {"type": "Feature", "id": ids[i]} if ids is not None else {"type": "Feature"}
        feature["geometry"] = json.loads(shapely.to_geojson(ann.geometry))
        feature["properties"] = props
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def to_geojson(encoding, *, patch_side_um: float | None = None, name: str = "") -> dict:
    """A GeoJSON FeatureCollection (level-0 px) with one QuPath annotation per region; the ROI is flagged.

    Each feature: geometry Polygon / MultiPolygon (holes kept); properties ``objectType: "annotation"``,
    ``classification {name, color}`` ("CARE ROI" or "CARE region"), ``name``, ``isLocked``,
    ``measurements`` (n_patches, pi, alpha, beta, area_um2 when known, ``<head> p(<class>)`` per head),
    ``predictions`` ({head: class}, when heads ran), ``care_region_id`` and ``is_roi``.
    """
    annotations = region_annotations(encoding, patch_side_um=patch_side_um)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"care/{name}/region/{a.properties['care_region_id']}")) for a in annotations]
    return annotations_to_geojson(annotations, ids=ids)


def write_geojson(encoding, path: str | Path, *, patch_side_um: float | None = None, name: str = "") -> Path:
    """Write ``to_geojson`` to ``path`` atomically (QuPath: File > Import objects)."""
    return atomic_write_text(path, json.dumps(to_geojson(encoding, patch_side_um=patch_side_um, name=name)))


def write_region_csv(encoding, path: str | Path, *, patch_side_um: float | None = None) -> Path:
    """Write the per-region table (``REGION_COLUMNS`` then ``prediction_columns``; empty area_um2 when unknown)
    to ``path`` atomically."""
    preds = prediction_columns(encoding)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*REGION_COLUMNS, *preds], lineterminator="\n")
    writer.writeheader()
    for row in region_table(encoding, patch_side_um=patch_side_um):
        row.update({k: v[row["id"]] for k, v in preds.items()})
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def write_asap(encoding, path: str | Path, *, patch_side_um: float | None = None) -> Path:
    """Write the regions as ASAP XML atomically (group "CARE ROI" / "CARE region"; holes as "Exclusion")."""
    from care_core.regions.asap import write_asap_xml

    return write_asap_xml(region_annotations(encoding, patch_side_um=patch_side_um), path)
