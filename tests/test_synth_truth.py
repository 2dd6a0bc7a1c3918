"""Ground truth for synthetic slides: patch compartments from the mask, region purity, squares left."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.model import SlideEncoding
from care_core.synth.truth import left_own_square, patch_compartments, region_purity


def test_patch_compartment_is_the_majority_tissue_id_under_the_patch():
    mask = np.zeros((8, 8), np.uint8)  # 1 mask px = 16 level-0 px; patches of 64 px = 4 mask px
    mask[:4, :4] = 2
    mask[:4, 3] = 3  # 4 of 16 px: minority
    mask[4:, 4:6] = 5  # half tissue, half glass: glass ignored
    coords = np.array([[0, 0], [64, 64], [0, 64]])
    np.testing.assert_array_equal(patch_compartments(coords, 64, mask, 16), [2, 5, -1])


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
