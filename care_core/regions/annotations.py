"""Polygon annotations in level-0 px, read from QuPath GeoJSON or ASAP XML (``read_annotations``)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from care_core.errors import AnnotationFileError

__all__ = ["Annotation", "read_annotations", "read_qupath_geojson", "polygonal"]


@dataclass(frozen=True)
class Annotation:
    """One annotated area: a shapely Polygon / MultiPolygon in level-0 px (x right, y down, pixel corners).

    classification: the class name (QuPath classification, ASAP group), None when unclassified.
    name: the annotation's own name, None when it has none. color: (r, g, b) 0-255 when the file gives one.
    properties: everything else the file records for it (QuPath properties, e.g. measurements).
    """

    geometry: Any
    classification: str | None = None
    name: str | None = None
    color: tuple[int, int, int] | None = None
    properties: dict = field(default_factory=dict, compare=False)


def polygonal(geom):
    """The areal part of a shapely geometry, made valid: a Polygon or MultiPolygon, or None when it has no area."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)) and geom.is_valid:
        return geom if geom.area > 0 else None
    geom = shapely.make_valid(geom)
    parts, todo = [], [geom]
    while todo:  # flatten collections (make_valid may return polygons beside lines)
        g = todo.pop()
        if isinstance(g, Polygon) and g.area > 0:
            parts.append(g)
        elif hasattr(g, "geoms"):
            todo.extend(g.geoms)
    if not parts:
        return None
    parts.sort(key=lambda g: g.bounds)
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def read_annotations(path: str | Path) -> list[Annotation]:
    """Polygon annotations of a QuPath GeoJSON (``.geojson``/``.json``) or ASAP XML (``.xml``) file, in file order.

    Points and lines (no area) are skipped with a warning; self-intersecting polygons are repaired.
    Raises AnnotationFileError when the file is missing, unreadable or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationFileError(f"{path}: no such annotation file; check the path")
    try:
        head = path.read_bytes()[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as err:
        raise AnnotationFileError(f"{path}: cannot be read ({err}); check its permissions") from err
    if head[:1] in (b"{", b"["):
        return read_qupath_geojson(path)
    if head[:1] == b"<":
        from care_core.regions.asap import read_asap_xml

        return read_asap_xml(path)
    raise AnnotationFileError(
        f"{path}: neither GeoJSON nor XML; export the annotations from QuPath (File > Export objects as GeoJSON) "
        f"or from ASAP (.xml)"
    )


def read_qupath_geojson(path: str | Path) -> list[Annotation]:
    """Annotations of a QuPath GeoJSON export: a FeatureCollection, a list of Features, or one Feature."""
    from shapely.geometry import shape

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationFileError(f"{path}: not valid JSON ({err}); re-export it from QuPath as GeoJSON") from err
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationFileError(
            f"{path}: JSON but not GeoJSON features (top level {type(data).__name__} "
            f"{data.get('type') if isinstance(data, dict) else ''}); export objects as GeoJSON from QuPath"
        )
    out, skipped = [], 0
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationFileError(f"{path}: item {i} is not a GeoJSON Feature; re-export it from QuPath")
        try:
            geom = None if feature.get("geometry") is None else shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise AnnotationFileError(f"{path}: feature {i} has a broken geometry ({err}); re-export it") from err
        area = polygonal(geom)
        if area is None:
            skipped += 1
            continue
        props = dict(feature.get("properties") or {})
        name, color = _qupath_class(props.pop("classification", None))
        out.append(Annotation(area, classification=name, name=props.pop("name", None), color=color, properties=props))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} feature(s) without area (points or lines)", stacklevel=2)
    return out


def _qupath_class(value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    """(name, rgb) of a QuPath classification: {"name", "color": [r, g, b]} (0.3+), {"name", "colorRGB": int}
    (0.2) or a bare string."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    name = value.get("name")
    if name is None and value.get("names"):
        name = ": ".join(value["names"])
    color = value.get("color")
    if isinstance(color, (list, tuple)) and len(color) >= 3:
        return name, tuple(int(c) for c in color[:3])
    if isinstance(value.get("colorRGB"), int):
        rgb = value["colorRGB"] & 0xFFFFFF
        return name, ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
    return name, None
