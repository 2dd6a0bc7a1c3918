"""Region exports: the pyramidal OME-TIFF label mask, every format at once, and `care export`; all read back."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from slide_factory import pattern_image, write_svs
from test_regions import S, ring_encoding

from care_core.cli import main
from care_core.errors import InvalidInputError
from care_core.model import SlideEncoding
from care_core.regions import EXPORT_FORMATS, export_regions, read_annotations, read_label_mask, write_label_mask
from care_core.wsi import open_slide

SIZE = (5000, 3700)  # level-0 (w, h) of the slide the ring encoding lies on


def test_label_mask_pyramid_values_and_mpp(tmp_path):
    enc = ring_encoding()
    path = write_label_mask(enc, tmp_path / "m.ome.tif", slide_size_level0=SIZE, mpp=0.5)
    mask = read_label_mask(path)
    assert mask.mpp == 0.5 and mask.dimensions == SIZE
    assert [lvl.shape for lvl in mask.levels] == [(3700, 5000), (1850, 2500), (925, 1250), (463, 625), (232, 313)]
    l0 = mask.levels[0]
    assert l0.dtype == np.uint16
    # every patch's level-0 square holds its region id + 1, nothing else does
    for (x, y), region in zip(enc.coords, enc.patch_region):
        assert (l0[y : y + S, x : x + S] == region + 1).all()
    counts = np.bincount(l0.ravel(), minlength=3)
    assert counts[1] == 8 * S * S and counts[2] == 3 * S * S  # the ring's hole stays 0
    assert l0[2000 + S + 5, 1000 + S + 5] == 0
    # level 2 samples level-0 px (4i, 4j)
    np.testing.assert_array_equal(mask.levels[2], l0[::4, ::4])
    assert not list(tmp_path.glob(".*"))


def test_mask_is_cut_at_the_slide_edge(tmp_path):
    enc = ring_encoding()
    size = (1000 + 5 * S + 100, 2000 + S + 100)  # the slide ends 100 px into region 1's (5, 1) patch
    mask = read_label_mask(write_label_mask(enc, tmp_path / "m.ome.tif", slide_size_level0=size, mpp=None))
    assert mask.mpp is None and mask.dimensions == size
    assert (mask.levels[0][2000 + S :, 1000 + 5 * S :] == 2).all() and mask.levels[0][2000 + S :, 1000 + 5 * S :].size == 100**2


def test_export_every_format_reads_back(tmp_path):
    enc = ring_encoding()
    enc.meta.update(slide_size_level0=list(SIZE), slide_mpp=0.25)
    written = export_regions(enc, tmp_path / "out", "s")
    assert {f: p.name for f, p in written.items()} == {
        "geojson": "s_regions.geojson", "asap": "s_regions.xml", "mask": "s_regions.ome.tif", "csv": "s_regions.csv",
        "npz": "s_encoding.npz",
    }
    for fmt in ("geojson", "asap"):
        assert [a.geometry.area for a in read_annotations(written[fmt])] == [8 * S * S, 3 * S * S]
    assert read_label_mask(written["mask"]).mpp == 0.25
    with open(written["csv"], newline="") as fh:
        assert [r["n_patches"] for r in csv.DictReader(fh)] == ["8", "3"]
    back = SlideEncoding.load_npz(written["npz"])
    np.testing.assert_array_equal(back.region_embeddings, enc.region_embeddings)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.values())


def test_export_refusals_write_nothing(tmp_path):
    with pytest.raises(InvalidInputError, match="'shp' is not one of geojson, asap, mask, csv, npz"):
        export_regions(ring_encoding(), tmp_path, "s", formats=["csv", "shp"])
    with pytest.raises(InvalidInputError, match="needs the slide's size.*care export --slide"):
        export_regions(ring_encoding(), tmp_path, "s", formats=["csv", "mask"])
    assert list(tmp_path.iterdir()) == []


def test_care_export_cli(tmp_path, capsys):
    slide = write_svs(tmp_path / "s.svs", pattern_image(4200, 3600), n_levels=2, mpp=0.5, associated=False)
    npz = ring_encoding().save_npz(tmp_path / "s_encoding.npz")
    assert main(["export", str(npz), "--out", str(tmp_path / "out"), "--slide", str(slide), "--format", "mask,geojson"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["mask", "geojson"]
    mask = read_label_mask(tmp_path / "out" / "s_regions.ome.tif")
    with open_slide(slide) as s:
        assert mask.dimensions == s.dimensions and mask.mpp == s.mpp
    assert main(["export", str(tmp_path / "none_encoding.npz"), "--out", str(tmp_path)]) == 2
    assert "none_encoding.npz: no such file" in capsys.readouterr().err


def test_formats_table_names_every_writer():
    assert list(EXPORT_FORMATS) == ["geojson", "asap", "mask", "csv", "npz"]
