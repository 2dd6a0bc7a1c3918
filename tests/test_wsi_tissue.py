"""care_core.wsi.detect_tissue on drawn slides with known tissue area, holes and specks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from shapely.geometry import Point
from slide_factory import tissue_image, write_generic_pyramid

from care_core.errors import NoTissueError
from care_core.wsi import TissueMask, detect_tissue, open_slide
from care_core.wsi.tissue import mask_level, mask_polygons

MPP = 2.0  # µm/px at level 0 of the drawn slides
BIG = (500, 600, 350)  # disc (cx, cy, r) in level-0 px
SMALL = (1250, 450, 200)
HOLE = (500, 600, 100)  # 0.126 mm²: kept as a hole
PINHOLE = (1250, 450, 15)  # 0.0028 mm² < 0.1 mm²: filled
SPECK = (1250, 1000, 20)  # 0.005 mm² < 0.01 mm²: dropped


def _disc_mm2(r: float) -> float:
    return np.pi * r**2 * MPP**2 / 1e6


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    img = tissue_image(1600, 1200, [BIG, SMALL, SPECK], holes=[HOLE, PINHOLE], seed=3)
    path = write_generic_pyramid(tmp_path_factory.mktemp("tissue") / "drawn.tif", img, n_levels=4, mpp=MPP)
    with open_slide(path) as slide:
        yield slide


def test_mask_on_level_near_8_um(drawn):
    assert mask_level(drawn) == 2  # downsamples 1, 2, 4, 8 at 2 µm/px: 8 µm/px is level 2
    assert mask_level(drawn, mask_mpp=16.0) == 3
    tissue = detect_tissue(drawn)
    assert isinstance(tissue, TissueMask)
    assert tissue.downsample == 4.0
    assert tissue.mask.shape == (300, 400) and tissue.mask.dtype == bool


def test_area_matches_drawing(drawn):
    tissue = detect_tissue(drawn)
    expected = _disc_mm2(BIG[2]) - _disc_mm2(HOLE[2]) + _disc_mm2(SMALL[2])  # pinhole filled, speck dropped
    assert tissue.area_mm2 == pytest.approx(expected, rel=0.05)


def test_polygons_keep_holes_and_drop_specks(drawn):
    tissue = detect_tissue(drawn)
    polys = sorted(tissue.polygons_level0, key=lambda p: -p.area)
    assert len(polys) == 2
    big, small = polys
    assert len(big.interiors) == 1 and len(small.interiors) == 0  # the pinhole was filled
    assert big.area * MPP**2 / 1e6 == pytest.approx(_disc_mm2(BIG[2]) - _disc_mm2(HOLE[2]), rel=0.05)
    hole_centre = np.asarray(big.interiors[0].coords).mean(axis=0)
    np.testing.assert_allclose(hole_centre, HOLE[:2], atol=4)
    assert not big.contains(Point(HOLE[:2])) and big.contains(Point(BIG[0] - 225, BIG[1]))
    assert small.contains(Point(PINHOLE[:2])) and not any(p.contains(Point(SPECK[:2])) for p in polys)
    assert big.bounds == pytest.approx((BIG[0] - 350, BIG[1] - 350, BIG[0] + 350, BIG[1] + 350), abs=6)


def test_size_filters_are_in_um2(drawn):
    keep_speck = detect_tissue(drawn, min_object_um2=1_000.0)
    assert any(p.contains(Point(SPECK[:2])) for p in keep_speck.polygons_level0)
    no_fill = detect_tissue(drawn, min_hole_um2=100.0)
    inside_small = [p for p in no_fill.polygons_level0 if p.contains(Point(SMALL[0] + 150, SMALL[1]))]
    small = max(inside_small, key=lambda p: p.area)
    assert len(small.interiors) == 1


def test_unknown_mpp_gives_mask_without_area(tmp_path):
    img = tissue_image(2048, 1536, [(1000, 700, 500)], seed=4)
    path = write_generic_pyramid(tmp_path / "nompp.tif", img, n_levels=3, mpp=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        slide = open_slide(path)
    with slide:
        tissue = detect_tissue(slide)
    assert tissue.area_mm2 is None
    assert tissue.downsample == 1.0  # longest side 2048 px is the mask size when mpp is unknown
    assert tissue.mask.sum() == pytest.approx(np.pi * 500**2, rel=0.05)


def test_all_tissue_field_is_not_split(tmp_path):
    img = tissue_image(1024, 1024, [(512, 512, 5000)], seed=5)  # pink everywhere
    with open_slide(write_generic_pyramid(tmp_path / "full.tif", img, n_levels=2, mpp=4.0)) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.mean() > 0.99


def test_no_tissue(tmp_path):
    img = tissue_image(1024, 768, [], seed=6)
    with open_slide(write_generic_pyramid(tmp_path / "glass.tif", img, n_levels=2, mpp=4.0)) as slide:
        with pytest.raises(NoTissueError, match=r"glass\.tif: no tissue found on level \d .*lower min_object_um2"):
            detect_tissue(slide)


def test_mask_polygons_hand_made():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 2:10] = True  # 6 x 8 block
    mask[4:6, 5:7] = False  # 2 x 2 hole
    (poly,) = mask_polygons(mask, downsample=4.0)
    assert len(poly.interiors) == 1
    # contours run through pixel-edge midpoints: corners are cut by half a pixel each
    assert poly.exterior.bounds == (8.0, 8.0, 40.0, 32.0)
    assert poly.area == pytest.approx((48 - 4 * 0.125 - (4 - 4 * 0.125)) * 16)


def test_faint_fat_joins_tissue_and_glass_stays_out(small_sample):
    """Fat (white vacuoles, thin pink walls) is tissue when it touches tissue; glass is not."""
    from skimage.transform import resize

    with open_slide(small_sample.slide_path) as slide:
        tissue = detect_tissue(slide)
        no_faint = detect_tissue(slide, faint_saturation=0)
    truth = resize(small_sample.read_mask(), tissue.mask.shape, order=0, preserve_range=True).astype(int)
    fat = truth == 4
    assert fat.sum() > 500
    # vacuoles that open onto the glass at the tissue edge stay out; the rest of the fat is found (this slide's
    # fat is mostly at the edge since a lymphoid aggregate took part of its inner fat)
    assert tissue.mask[fat].mean() > 0.5
    assert no_faint.mask[fat].mean() < 0.1  # colour thresholds alone lose the fat
    for label in (1, 2, 3):  # all but a rim at the tissue edge (the mask is resized to the tissue grid)
        assert tissue.mask[truth == label].mean() > 0.98
    assert tissue.mask[truth == 0].mean() < 0.05
