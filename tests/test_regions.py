"""Region geometry (raster, polygons, ROI, table) and exporters (QuPath GeoJSON, CSV)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from care_core.model import SlideEncoding
from care_core.regions import REGION_COLUMNS, label_raster, region_polygons, region_table, roi_geometry, to_geojson
from care_core.regions import write_geojson, write_region_csv

S = 512  # patch side, level-0 px


def ring_encoding(mpp: float | None = 0.5) -> SlideEncoding:
    """Region 0: a 3×3 ring (hole in the middle); region 1: two diagonal patches + the hole's neighbour row."""
    ring = [(c, r) for r in range(3) for c in range(3) if (c, r) != (1, 1)]
    other = [(4, 0), (5, 1), (4, 2)]
    grid = np.array(ring + other)
    region = np.array([0] * len(ring) + [1] * len(other))
    return SlideEncoding(
        slide_embedding=np.zeros(4, np.float32),
        region_embeddings=np.eye(2, 4, dtype=np.float32),
        patch_region=region,
        region_subregion=np.array([0, 1]),
        pi=np.array([0.7, 0.3], np.float32),
        alpha=np.array([8 / 11, 3 / 11], np.float32),
        beta=np.array([0.6727, 0.3273], np.float32),
        roi=0,
        coords=grid * S + np.array([1000, 2000]),
        grid=grid,
        patch_size_level0=S,
        mpp=mpp,
        patch_px=256 if mpp else None,
    )


def test_label_raster():
    enc = ring_encoding()
    ras = label_raster(enc.patch_region, enc.grid)
    expected = np.array([[0, 0, 0, -1, 1, -1], [0, -1, 0, -1, -1, 1], [0, 0, 0, -1, 1, -1]])
    np.testing.assert_array_equal(ras, expected)
    assert ras.dtype == np.int32
    with pytest.raises(ValueError, match="patch_region has 2 entries but grid has 11 rows"):
        label_raster(np.array([0, 1]), enc.grid)


def test_polygons_hole_multipolygon_and_area():
    enc = ring_encoding()
    ring, other = region_polygons(enc.patch_region, enc.coords, S)
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert ring.area == 8 * S * S
    assert shapely.Polygon(ring.interiors[0]).equals(shapely.box(1000 + S, 2000 + S, 1000 + 2 * S, 2000 + 2 * S))
    assert ring.bounds == (1000, 2000, 1000 + 3 * S, 2000 + 3 * S)
    assert len(ring.exterior.coords) == 5  # merged boxes: a clean square outline
    assert other.geom_type == "MultiPolygon" and other.area == 3 * S * S  # corner-touching squares stay separate parts


def test_roi_and_table():
    enc = ring_encoding()
    poly, bbox = roi_geometry(enc)
    assert bbox == (1000.0, 2000.0, 1000.0 + 3 * S, 2000.0 + 3 * S) and poly.area == 8 * S * S
    rows = region_table(enc)
    assert [r["n_patches"] for r in rows] == [8, 3]
    side_um = 256 * 0.5
    assert rows[0]["area_um2"] == pytest.approx(8 * side_um**2)
    assert rows[0]["centroid_x_level0"] == pytest.approx(1000 + 1.5 * S)  # symmetric ring: centre of the 3×3 block
    assert rows[0]["is_roi"] and not rows[1]["is_roi"]
    assert list(rows[0]) == list(REGION_COLUMNS)
    assert region_table(ring_encoding(mpp=None))[0]["area_um2"] is None


def test_geojson_qupath_structure_and_readback(tmp_path):
    enc = ring_encoding()
    path = write_geojson(enc, tmp_path / "s_regions.geojson", name="s")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    f0, f1 = data["features"]
    for f in data["features"]:
        props = f["properties"]
        assert f["type"] == "Feature" and props["objectType"] == "annotation"
        assert set(props["classification"]) == {"name", "color"}
        assert len(props["classification"]["color"]) == 3 and all(0 <= c <= 255 for c in props["classification"]["color"])
        assert set(props["measurements"]) == {"n_patches", "pi", "alpha", "beta", "area_um2"}
    assert f0["properties"]["classification"]["name"] == "CARE ROI" and f0["properties"]["is_roi"]
    assert f1["properties"]["classification"]["name"] == "CARE region"
    g0, g1 = shape(f0["geometry"]), shape(f1["geometry"])
    assert g0.geom_type == "Polygon" and len(g0.interiors) == 1 and g0.area == 8 * S * S
    assert g1.geom_type == "MultiPolygon"
    assert f0["properties"]["measurements"]["n_patches"] == 8
    no_mpp = to_geojson(ring_encoding(mpp=None))
    assert "area_um2" not in no_mpp["features"][0]["properties"]["measurements"]
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_region_csv(tmp_path):
    path = write_region_csv(ring_encoding(mpp=None), tmp_path / "s_regions.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(REGION_COLUMNS)
    assert [r["n_patches"] for r in rows] == ["8", "3"]
    assert rows[0]["area_um2"] == "" and rows[0]["is_roi"] == "True"
    assert float(rows[1]["pi"]) == pytest.approx(0.3)
