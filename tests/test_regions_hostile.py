"""Hostile annotation files and encodings: one AnnotationFileError / InvalidInputError line naming the file, never a
traceback; `care export` writes all of its files or none."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from test_regions import ring_encoding

from care_core.cli import main
from care_core.errors import AnnotationFileError, InvalidInputError
from care_core.regions import export_regions, read_annotations

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


def _encoding():
    enc = ring_encoding()  # 11 patches, 2 regions, ROI 0
    enc.meta.update(slide_size_level0=[5000, 3700], slide_mpp=0.25)
    return enc


def _npz_with(path, **extra):
    """The ring encoding's .npz with members added or replaced."""
    _encoding().save_npz(path)
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    np.savez(path, **{**members, **extra})
    return path


def _scalars_with(**extra):
    enc = _encoding()
    scalars = {k: getattr(enc, k) for k in ("roi", "rsl", "rsl_loss", "patch_size_level0", "mpp", "patch_px")}
    return np.array(json.dumps({**scalars, **extra}))


@pytest.mark.parametrize(("make", "said"), [
    (lambda p: p.write_bytes(b""), "not a CARE encoding (an empty, truncated or foreign file: EOFError)"),
    (lambda p: np.savez(p), "lacks ['meta_json', 'scalars_json', 'slide_embedding'], so it is not a CARE encoding"),
    (lambda p: p.write_bytes(b"PK\x03\x04 cut short"), "not a CARE encoding (an empty, truncated or foreign file"),
    (lambda p: _npz_with(p, region_area_um2=np.ones(2)),
     "holds field(s) ['region_area_um2'] that this napari-care does not know (written by a newer version?)"),
    (lambda p: _npz_with(p, scalars_json=_scalars_with(tissue_um2=4.0)), "holds field(s) ['tissue_um2']"),
    (lambda p: _npz_with(p, patch_region=np.r_[-1, _encoding().patch_region[1:]]),
     "region ids run from -1 to 1 but the encoding has 2 regions (0..1)"),
    (lambda p: _npz_with(p, patch_region=np.r_[5, _encoding().patch_region[1:]]),
     "region ids run from 0 to 5 but the encoding has 2 regions (0..1)"),
    (lambda p: _npz_with(p, coords=_encoding().coords[:-3]), "coords has shape (8, 2) but there are 11 patches"),
    (lambda p: _npz_with(p, scalars_json=_scalars_with(roi=2)), "ROI 2 is not one of its 2 regions (0..1)"),
    (lambda p: _npz_with(p, coords=_encoding().coords - 5000), "coords hold negative or non-finite values"),
])
def test_care_export_refuses_a_hostile_encoding_with_one_line(tmp_path, capsys, make, said):
    path = tmp_path / "s_encoding.npz"
    make(path)
    out = tmp_path / "out"
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"care export: error: {path}: {said}") and err.count("\n") == 1, err
    assert not out.exists()


def test_an_in_memory_encoding_out_of_range_is_refused_before_writing(tmp_path):
    bad = dataclasses.replace(_encoding(), roi=7)
    with pytest.raises(InvalidInputError, match=r"encoding of 's': ROI 7 is not one of its 2 regions"):
        export_regions(bad, tmp_path / "out", "s")
    assert not (tmp_path / "out").exists()


def test_a_read_only_existing_folder_is_one_line(readonly_dir, tmp_path, capsys):
    path = _encoding().save_npz(tmp_path / "s_encoding.npz")
    assert main(["export", str(path), "--out", str(readonly_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"care export: error: cannot write in output folder {readonly_dir} (Read-only file system)")
    assert err.count("\n") == 1 and list(readonly_dir.iterdir()) == []


def test_a_full_disk_leaves_all_files_or_none_and_says_so_truly(small_disk, tmp_path, capsys):
    path = _encoding().save_npz(tmp_path / "s_encoding.npz")
    reference = export_regions(_encoding(), tmp_path / "ref", "s")
    small = reference["geojson"].stat().st_size + reference["asap"].stat().st_size
    assert small < 16_384 < reference["mask"].stat().st_size  # GeoJSON and XML fit, the mask does not
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 16_384))
    free = shutil.disk_usage(small_disk).free
    out = small_disk / "out"
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"care export: error: disk full: {small_disk} has ") and err.count("\n") == 1
    assert "(nothing was left half-written)" in err
    assert list(out.iterdir()) == []  # neither the GeoJSON nor the XML stayed, no temp file either
    assert shutil.disk_usage(small_disk).free == free
    filler.unlink()  # with room, the same command writes every file
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.values())
