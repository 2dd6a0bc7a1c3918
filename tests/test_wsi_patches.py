"""care_core.wsi.patch_grid: coordinates, counts and tissue fractions on hand-made masks, level choice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from slide_factory import pattern_image, tissue_image, write_generic_pyramid, write_svs

from care_core.errors import MissingMppError, NoTissueError
from care_core.wsi import PatchGrid, TissueMask, open_slide, patch_grid
from care_core.wsi.patches import read_level_for_mpp, tissue_fractions


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """2048 x 1536 px at 0.25 µm/px with levels at downsample 1, 2, 4, 8."""
    path = write_generic_pyramid(tmp_path_factory.mktemp("grid") / "s.tif", pattern_image(2048, 1536), n_levels=4,
                                 mpp=0.25)
    with open_slide(path) as s:
        yield s


def _mask(cells: dict[tuple[int, int], int]) -> TissueMask:
    """Mask at downsample 16 (a 256-px patch is 16 x 16 mask px); ``cells[(col, row)]`` = tissue px in that patch,
    drawn as whole mask rows from the patch's top."""
    mask = np.zeros((96, 128), bool)
    for (col, row), n_px in cells.items():
        block = mask[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16].reshape(-1)
        block[:n_px] = True
        mask[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = block.reshape(16, 16)
    return TissueMask(mask=mask, downsample=16.0, polygons_level0=[], area_mm2=None)


def test_grid_on_hand_made_mask(slide):
    tissue = _mask({(0, 0): 256, (2, 1): 64, (3, 2): 48, (7, 5): 128})
    grid = patch_grid(slide, tissue, target_mpp=0.5, patch_px=128, min_tissue=0.25)
    assert isinstance(grid, PatchGrid)
    assert grid.patch_size_level0 == 256 and grid.patch_px == 128 and grid.target_mpp == 0.5
    np.testing.assert_array_equal(grid.coords, [[0, 0], [512, 256], [1792, 1280]])  # (3, 2) has 0.1875 < 0.25
    assert grid.coords.dtype == np.int64
    np.testing.assert_allclose(grid.tissue_fraction, [1.0, 0.25, 0.5])
    assert grid.level == 1  # 0.5 µm/px target over a 0.25 µm/px slide: downsample-2 level


def test_min_tissue_zero_keeps_every_whole_patch(slide):
    grid = patch_grid(slide, _mask({(0, 0): 1}), target_mpp=0.5, patch_px=128, min_tissue=0.0)
    assert len(grid.coords) == 8 * 6
    assert grid.coords[:, 0].max() == 1792 and grid.coords[:, 1].max() == 1280
    assert (grid.coords % 256 == 0).all()


def test_tissue_fractions_round_to_mask_pixels():
    tissue = TissueMask(mask=np.eye(4, dtype=bool), downsample=10.0, polygons_level0=[], area_mm2=None)
    coords = np.array([[0, 0], [20, 0], [10, 10], [30, 30]])  # the last box overhangs the mask: 1 of its 4 px inside
    np.testing.assert_allclose(tissue_fractions(tissue, coords, 20), [0.5, 0.0, 0.5, 0.25])


@pytest.mark.parametrize(("target", "level"), [(0.25, 0), (0.3, 0), (0.5, 1), (0.9, 1), (1.0, 2), (2.0, 3), (10.0, 3)])
def test_level_at_or_finer_than_target(slide, target, level):
    assert read_level_for_mpp(slide, target) == level
    assert slide.level_mpp(level) <= target


def test_patch_size_rounds(tmp_path):
    path = write_svs(tmp_path / "r.svs", pattern_image(1200, 1000), n_levels=2, mpp=0.499, associated=False)
    with open_slide(path) as s:
        tissue = TissueMask(mask=np.ones((10, 12), bool), downsample=100.0, polygons_level0=[], area_mm2=None)
        grid = patch_grid(s, tissue)
    assert grid.patch_size_level0 == 513  # round(512 * 0.5 / 0.499)
    # 1200 x 1000 px is 2.3 x 1.9 patches: the last column and row overhang the edge and are kept
    np.testing.assert_array_equal(grid.coords, [[0, 0], [513, 0], [1026, 0], [0, 513], [513, 513], [1026, 513]])
    np.testing.assert_allclose(grid.tissue_fraction, [1, 1, 0.4, 1, 1, 0.4])  # 2 of 5 mask columns lie on the slide
    assert grid.level == 0  # level 1 (0.998 µm/px) is coarser than 0.5 µm/px


def test_tissue_in_a_strip_narrower_than_a_patch_is_patched(tmp_path):
    path = write_svs(tmp_path / "e.svs", pattern_image(1200, 1000), n_levels=2, mpp=0.5, associated=False)
    mask = np.zeros((10, 12), bool)
    mask[:, 10:] = True  # tissue only in the last 200 px, less than one 512 px patch
    with open_slide(path) as s:
        grid = patch_grid(s, TissueMask(mask=mask, downsample=100.0, polygons_level0=[], area_mm2=None),
                          target_mpp=0.5, patch_px=512)
        np.testing.assert_array_equal(grid.coords, [[1024, 0], [1024, 512]])
        np.testing.assert_allclose(grid.tissue_fraction, [10 / 25, 10 / 25])  # round(15.36) - 10 = 5 mask columns
        patch = s.read_region(tuple(grid.coords[1]), 0, (512, 512))
    assert (patch[:, 176:] == 255).all() and (patch[488:] == 255).all()  # beyond the edge: background
    assert (patch[:488, :176] != 255).any()


def test_default_tissue_detection(tmp_path):
    img = tissue_image(2048, 2048, [(1024, 1024, 700)], seed=7)
    with open_slide(write_generic_pyramid(tmp_path / "t.tif", img, n_levels=4, mpp=2.0)) as s:
        grid = patch_grid(s, target_mpp=2.0, patch_px=64, min_tissue=0.5)
    assert grid.patch_size_level0 == 64 and grid.level == 0
    centres = grid.coords + 32
    inside = np.hypot(centres[:, 0] - 1024, centres[:, 1] - 1024) <= 700 + 46  # within half a patch diagonal
    assert inside.all()
    assert len(grid.coords) == pytest.approx(np.pi * 700**2 / 64**2, rel=0.06)


def test_missing_mpp(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = open_slide(write_generic_pyramid(tmp_path / "n.tif", pattern_image(512, 512), n_levels=1, mpp=None))
    with s, pytest.raises(MissingMppError, match=r"n\.tif: the slide records no pixel size.*mpp=.*--mpp"):
        patch_grid(s, _mask({}))


def test_no_patch_kept(slide):
    message = r"no 256 px patch has tissue fraction >= 0.25 \(best 0.19\); lower min_tissue"
    with pytest.raises(NoTissueError, match=message):
        patch_grid(slide, _mask({(3, 2): 48}), target_mpp=0.5, patch_px=128)


def test_patch_larger_than_slide(slide):
    with pytest.raises(ValueError, match=r"is 4096 level-0 px, which does not fit the 2048x1536 px slide"):
        patch_grid(slide, _mask({}), target_mpp=1.0, patch_px=1024)
