"""Annotation files: QuPath GeoJSON and ASAP XML read back (hand-made files and our own exports)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from test_regions import S, ring_encoding

from care_core.errors import AnnotationFileError
from care_core.model.encoding import HeadPrediction
from care_core.regions import read_annotations, region_color, write_asap, write_asap_xml, write_geojson
from care_core.regions import write_region_csv
from care_core.regions.export import ROI_COLOR, class_color


def _with_predictions(enc):
    enc.predictions = [
        HeadPrediction("subtype", ("LUAD", "LUSC"), np.array([0.25, 0.75]), np.array([[0.9, 0.1], [0.2, 0.8]])),
        HeadPrediction("survival", ("risk",), np.array([1.5]), np.array([[0.3], [-0.7]])),
        HeadPrediction("slide_only", ("a", "b"), np.array([0.5, 0.5]), None),
    ]
    return enc


def test_geojson_export_reads_back_with_same_areas_and_predictions(tmp_path):
    path = write_geojson(_with_predictions(ring_encoding()), tmp_path / "s.geojson", name="s")
    roi, other = read_annotations(path)
    # with a head, each region is classified as its predicted class, coloured as the window's legend
    assert (roi.classification, roi.name, roi.color) == ("LUAD", "ROI region 0", class_color(0))
    assert (other.classification, other.name, other.color) == ("LUSC", "region 1", class_color(1))
    assert roi.geometry.is_valid and roi.geometry.area == 8 * S * S and len(roi.geometry.interiors) == 1
    assert other.geometry.geom_type == "MultiPolygon" and other.geometry.area == 3 * S * S
    m = roi.properties["measurements"]
    assert m["n_patches"] == 8 and m["subtype p(LUAD)"] == pytest.approx(0.9) and m["survival risk"] == pytest.approx(0.3)
    assert roi.properties["predictions"] == {"subtype": "LUAD"} and other.properties["predictions"] == {"subtype": "LUSC"}
    assert roi.properties["is_roi"] and roi.properties["care_region_id"] == 0
    assert not any("slide_only" in k for k in m)  # a head without region predictions adds no region columns
    assert m["subtype probability"] == pytest.approx(0.9)


def test_region_csv_has_prediction_columns(tmp_path):
    path = write_region_csv(_with_predictions(ring_encoding()), tmp_path / "s.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-4:] == ["subtype class", "subtype p(LUAD)", "subtype p(LUSC)", "survival risk"]
    assert [r["subtype class"] for r in rows] == ["LUAD", "LUSC"]
    assert float(rows[1]["survival risk"]) == pytest.approx(-0.7)


def test_qupath_02_list_with_colorRGB_points_and_a_bowtie(tmp_path):
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 5], [0, 5], [0, 0]]]},
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "name": "t1", "isLocked": True}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]},
         "properties": {"classification": "Stroma"}},
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(features))
    with pytest.warns(UserWarning, match="skipped 1 feature"):
        tumor, stroma = read_annotations(path)
    assert (tumor.classification, tumor.name, tumor.color) == ("Tumor", "t1", (200, 0, 0))  # ARGB 0xFFC80000
    assert tumor.geometry.equals(shapely.box(0, 0, 10, 5)) and tumor.properties == {"isLocked": True}
    assert stroma.classification == "Stroma" and stroma.name is None and stroma.color is None
    assert stroma.geometry.is_valid and stroma.geometry.area == pytest.approx(2.0)  # two triangles of the bowtie


def test_hand_written_asap_xml(tmp_path):
    xml = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="100" Y="50" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="100,0" Y="0" />
        <Coordinate Order="3" X="0" Y="50" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Rectangle" PartOfGroup="None" Color="#112233">
      <Coordinates>
        <Coordinate Order="0" X="200" Y="0" /><Coordinate Order="1" X="210" Y="0" />
        <Coordinate Order="2" X="210" Y="10" /><Coordinate Order="3" X="200" Y="10" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Dot" PartOfGroup="tumor" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
    <Annotation Name="Annotation 3" Type="Polygon" PartOfGroup="_2" Color="#000000">
      <Coordinates>
        <Coordinate Order="0" X="10" Y="10" /><Coordinate Order="1" X="20" Y="10" />
        <Coordinate Order="2" X="20" Y="20" /><Coordinate Order="3" X="10" Y="20" />
      </Coordinates>
    </Annotation>
    <Annotation Name="cut" Type="Polygon" PartOfGroup="Exclusion" Color="#000000">
      <Coordinates>
        <Coordinate Order="0" X="90" Y="0" /><Coordinate Order="1" X="100" Y="0" />
        <Coordinate Order="2" X="100" Y="50" /><Coordinate Order="3" X="90" Y="50" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""
    path = tmp_path / "a.xml"
    path.write_text(xml)
    with pytest.warns(UserWarning, match="skipped 1 annotation"):
        tumor, plain, other = read_annotations(path)
    assert (tumor.classification, tumor.name, tumor.color) == ("tumor", "Annotation 0", (255, 0, 0))
    assert tumor.geometry.equals(shapely.box(0, 0, 90, 50))  # the unmatched Exclusion polygon cut the one it overlaps
    assert (plain.classification, plain.color) == (None, (0x11, 0x22, 0x33)) and plain.geometry.area == 100
    assert other.classification == "_2" and other.geometry.area == 100


def test_asap_export_round_trip_keeps_holes_and_parts(tmp_path):
    path = write_asap(ring_encoding(), tmp_path / "s.xml")
    ring, other = read_annotations(path)
    assert (ring.classification, ring.name) == ("CARE ROI", "ROI region 0")
    assert ring.geometry.geom_type == "Polygon" and ring.geometry.area == 8 * S * S and len(ring.geometry.interiors) == 1
    assert other.geometry.geom_type == "MultiPolygon" and other.geometry.area == 3 * S * S
    again = write_asap_xml([ring, other], tmp_path / "again.xml")
    assert [a.geometry.area for a in read_annotations(again)] == [8 * S * S, 3 * S * S]
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.geojson", "{not json", "not valid JSON"),
        ("a.geojson", '{"type": "Polygon", "coordinates": []}', "not GeoJSON features"),
        ("a.geojson", '[{"type": "Polygon"}]', "item 0 is not a GeoJSON Feature"),
        ("a.xml", "<ASAP_Annotations><Annotations>", "not valid XML"),
        ("a.xml", "<svg></svg>", "not <ASAP_Annotations>"),
        ("a.txt", "x,y\n1,2\n", "neither GeoJSON nor XML"),
    ],
)
def test_bad_files_raise_a_project_error(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationFileError, match=match):
        read_annotations(path)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationFileError, match="no such annotation file"):
        read_annotations(tmp_path / "nope.geojson")


def test_region_colours_never_look_like_the_roi():
    import colorsys

    roi_hue = colorsys.rgb_to_hsv(*(c / 255 for c in ROI_COLOR))[0]
    hues = [colorsys.rgb_to_hsv(*(c / 255 for c in region_color(r)))[0] for r in range(500)]
    assert min(abs(h - roi_hue) for h in hues) > 0.05
    assert len({region_color(r) for r in range(50)}) == 50
