"""Hostile annotation files and encodings: one AnnotationFileError / InvalidInputError line naming the file, never a
traceback; `care export` writes all of its files or none."""

from __future__ import annotations

import json

import pytest

from care_core.errors import AnnotationFileError
from care_core.regions import read_annotations

SQUARE = [[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]]


def _feature(properties=None, ring=SQUARE):
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    if properties is not None:
        feature["properties"] = properties
    return feature


def _asap(order="0", x="1", y="1"):
    coords = "".join(f'<Coordinate Order="{o}" X="{a}" Y="{b}"/>' for o, a, b in
                     ((order, x, y), ("1", "9", "1"), ("2", "9", "9")))
    return (f'<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="t"><Coordinates>{coords}'
            "</Coordinates></Annotation></Annotations></ASAP_Annotations>")


@pytest.mark.parametrize(("name", "text", "match"), [
    ("a.geojson", json.dumps([_feature(ring=[[0, 0], [float("nan"), 0], [9, 9], [0, 0]])]),
     "feature 0 has a NaN or infinite coordinate; fix or re-export it"),
    ("a.geojson", json.dumps([_feature(), _feature(ring=[[0, 0], [float("inf"), 0], [9, 9], [0, 0]])]),
     "feature 1 has a NaN or infinite coordinate"),
    ("a.geojson", json.dumps([_feature({"classification": 5})]),
     "feature 0 has classification 5; a classification is a class name or an object with a 'name'"),
    ("a.geojson", json.dumps([_feature({"classification": {"name": "t", "color": ["r", "g", "b"]}})]),
     r"feature 0 has colour \['r', 'g', 'b'\]; a colour is three numbers 0-255"),
    ("a.geojson", json.dumps([_feature({"classification": {"name": "t", "colorRGB": "red"}})]),
     "feature 0 has colorRGB 'red'; QuPath writes it as an integer"),
    ("a.geojson", json.dumps([_feature({"classification": {"name": ["t"]}})]),
     r"feature 0 has classification name \['t'\], not text"),
    ("a.geojson", json.dumps([_feature("measurements")]), "feature 0 has properties 'measurements', not an object"),
    ("a.geojson", '{"type": "FeatureCollection", "features": "none"}', "'features' is a str, not a list"),
    ("a.geojson", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply to be annotations"),
    ("a.geojson", json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0]]]}}]),
     "feature 0 has a broken geometry"),
    ("a.xml", _asap(order="abc"), r"annotation 0 has a bad coordinate \(Order='abc' is not a number\)"),
    ("a.xml", _asap(x="nan"), r"annotation 0 has a bad coordinate \(X='nan' is not finite\)"),
    ("a.xml", _asap(y="-inf"), r"annotation 0 has a bad coordinate \(Y='-inf' is not finite\)"),
    ("a.xml", _asap(x="12px"), r"annotation 0 has a bad coordinate \(X='12px' is not a number\)"),
])
def test_hostile_annotation_files_are_one_line_naming_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationFileError, match=match) as info:
        read_annotations(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_well_formed_values_still_read(tmp_path):
    path = tmp_path / "ok.geojson"
    path.write_text(json.dumps([_feature({"classification": {"name": "t", "color": [200.0, 0, 10]}, "name": 7}),
                                _feature(None)]))
    first, second = read_annotations(path)
    assert (first.classification, first.color, first.name) == ("t", (200, 0, 10), "7")
    assert second.classification is None and second.properties == {}
    path = tmp_path / "ok.xml"
    path.write_text(_asap(order="0", x="1,5"))  # a comma-decimal locale
    (ann,) = read_annotations(path)
    assert ann.geometry.bounds == (1.5, 1.0, 9.0, 9.0)
