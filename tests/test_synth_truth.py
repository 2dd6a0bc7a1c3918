"""Ground truth for synthetic slides: patch compartments from the mask, region purity, squares left."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.model import SlideEncoding
from care_core.synth.truth import left_own_square, patch_compartments, region_purity


def test_patch_compartment_is_the_mask_value_under_the_patch_centre():
    mask = np.zeros((8, 8), np.uint8)  # 1 mask px = 16 level-0 px; patches of 64 px = 4 mask px
    mask[:4, :4] = 2
    mask[2, 2] = 3  # the centre of patch (0, 0) is level-0 (32, 32) = mask px (2, 2): a minority wins the centre
    mask[4:, 4:7] = 5  # patch (64, 64): centre at mask px (6, 6) = 5 although half of the patch is glass
    coords = np.array([[0, 0], [64, 64], [0, 64], [1000, 1000]])  # (0, 64) glass; the last one beyond the mask
    np.testing.assert_array_equal(patch_compartments(coords, 64, mask, 16), [3, 5, -1, -1])


def test_region_purity_hand_case():
    labels = np.array([1, 1, 1, 2, 2, 2, 2, 3, -1])
    regions = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])  # region 0: 3/4 of 1; region 1: 3/4 of 2 (the -1 is ignored)
    p = region_purity(regions, labels)
    assert p.purity == pytest.approx(6 / 8) and p.share_pure90 == 0.0 and p.mean_size == 4.0 and p.n_regions == 2
    pure = region_purity(np.array([0, 0, 1, 1]), np.array([1, 1, 2, 2]))
    assert pure.purity == 1.0 and pure.share_pure90 == 1.0


def test_left_own_square_counts_patches_assigned_to_another_square():
    grid = np.array([[0, 0], [1, 0], [2, 0], [3, 0]])  # k = 2: squares 0 (cols 0-1) and 1 (cols 2-3)
    enc = SlideEncoding(slide_embedding=np.zeros(2), patch_region=np.array([0, 0, 0, 1]), region_subregion=np.array([0, 1]),
                        grid=grid + 5, meta={"care_config": {"k": 2}})
    assert left_own_square(enc) == pytest.approx(0.25)  # the patch at col 2 joined square 0
