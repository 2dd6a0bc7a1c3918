"""The annotation record every reader and writer of ``care_core.regions`` shares: ``Annotation`` (a classified
polygon in level-0 px) and ``polygonal`` (the areal part of a geometry). It imports no other regions module, so
the GeoJSON reader, the ASAP reader / writer and the exporters all sit above it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Annotation", "polygonal", "finite_coordinates"]


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


def finite_coordinates(geom) -> bool:
    """True when every vertex of a shapely geometry is a finite number (no NaN, no Inf)."""
    import numpy as np
    import shapely

    return bool(np.isfinite(shapely.get_coordinates(geom)).all())


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
