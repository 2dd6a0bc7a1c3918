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

__all__ = ["region_color", "to_geojson", "write_geojson", "write_region_csv", "atomic_write_text"]

ROI_CLASS, REGION_CLASS = "CARE ROI", "CARE region"
ROI_COLOR = (230, 25, 75)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path


def region_color(region_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per region id (golden-ratio hue steps)."""
    h = (region_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def to_geojson(encoding, *, patch_side_um: float | None = None, name: str = "") -> dict:
    """A GeoJSON FeatureCollection (level-0 px) with one QuPath annotation per region; the ROI is flagged.

    Each feature: geometry Polygon / MultiPolygon (holes kept); properties ``objectType: "annotation"``,
    ``classification {name, color}`` ("CARE ROI" or "CARE region"), ``name``, ``isLocked``,
    ``measurements`` (n_patches, pi, alpha, beta, area_um2 when known), plus ``care_region_id`` and ``is_roi``.
    """
    import shapely

    rows = region_table(encoding, patch_side_um=patch_side_um)
    polys = region_polygons(encoding.patch_region, encoding.coords, encoding.patch_size_level0)
    features = []
    for row, poly in zip(rows, polys):
        rid = row["id"]
        measurements = {k: row[k] for k in ("n_patches", "pi", "alpha", "beta")}
        if row["area_um2"] is not None and math.isfinite(row["area_um2"]):
            measurements["area_um2"] = row["area_um2"]
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"care/{name}/region/{rid}")),
                "geometry": json.loads(shapely.to_geojson(poly)),
                "properties": {
                    "objectType": "annotation",
                    "name": f"{'ROI ' if row['is_roi'] else ''}region {rid}",
                    "classification": {
                        "name": ROI_CLASS if row["is_roi"] else REGION_CLASS,
                        "color": list(ROI_COLOR if row["is_roi"] else region_color(rid)),
                    },
                    "isLocked": False,
                    "measurements": measurements,
                    "care_region_id": rid,
                    "is_roi": bool(row["is_roi"]),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(encoding, path: str | Path, *, patch_side_um: float | None = None, name: str = "") -> Path:
    """Write ``to_geojson`` to ``path`` atomically (QuPath: File > Import objects)."""
    return atomic_write_text(path, json.dumps(to_geojson(encoding, patch_side_um=patch_side_um, name=name)))


def write_region_csv(encoding, path: str | Path, *, patch_side_um: float | None = None) -> Path:
    """Write the per-region table (``REGION_COLUMNS``; empty area_um2 when unknown) to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(REGION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in region_table(encoding, patch_side_um=patch_side_um):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())
