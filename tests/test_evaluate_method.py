"""The method benchmark's measurements on hand-made slides: baseline partitions, the rule's best, ROI reports."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.evaluate.method import (kmeans_regions, roi_report, rule_best_regions, slic_regions,
                                       square_regions)
from care_core.synth.truth import region_purity


def _grid(w: int, h: int) -> np.ndarray:
    return np.array([(x, y) for y in range(h) for x in range(w)], np.int64)


def test_squares_number_the_non_empty_squares_in_raster_order():
    grid = _grid(6, 4) + 5  # an offset grid: squares start at the grid's minimum
    np.testing.assert_array_equal(square_regions(grid, 3).reshape(4, 6),
                                  [[0, 0, 0, 1, 1, 1]] * 3 + [[2, 2, 2, 3, 3, 3]])


def test_kmeans_regions_follow_two_textures_and_merge_specks():
    grid = _grid(16, 8)
    left = grid[:, 0] < 8
    rng = np.random.default_rng(0)
    feats = np.where(left[:, None], 0.0, 5.0) + 0.1 * rng.standard_normal((len(grid), 4))
    feats[(grid[:, 0] == 3) & (grid[:, 1] == 3)] = 5.0  # one right-texture patch inside the left half: a speck
    part = kmeans_regions(feats, grid, target_size=64)
    assert part.max() + 1 == 2  # the speck (1 patch < 4) went to the component around it
    assert len(set(part[left])) == 1 and len(set(part[~left])) == 1 and part[left][0] != part[~left][0]


def test_slic_hits_the_target_size_within_tolerance():
    grid = _grid(24, 16)
    feats = np.random.default_rng(1).standard_normal((len(grid), 16))
    part = slic_regions(feats, grid, target_size=32, compactness=1.0)
    assert abs(len(grid) / (part.max() + 1) / 32 - 1) <= 0.15


def test_rule_best_moves_a_patch_to_the_first_candidate_of_its_own_compartment():
    grid = _grid(16, 8)  # two 8x8 squares side by side
    labels = np.where(grid[:, 0] < 8, 1, 2)
    labels[(grid[:, 0] == 7) & (grid[:, 1] == 4)] = 2  # a compartment-2 patch at the left square's right edge
    labels[(grid[:, 0] == 0) & (grid[:, 1] == 0)] = 2  # ... and one far from the right square (still a candidate)
    part = rule_best_regions(grid, labels, k=8, n_candidates=3)
    assert region_purity(part, labels).purity == 1.0
    assert region_purity(square_regions(grid, 8), labels).purity == pytest.approx(126 / 128)


def test_roi_report_hand_case():
    region = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([1, 1, 2, -1, 3, 3, 1, 1, 1])
    structure = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1])
    rep = roi_report(region, 1, np.array([0.2, 0.6, 0.2]), labels, structure)
    assert rep.compartment_share == {3: 1.0} and rep.structure_share == 1.0
    assert rep.holds_structure and not rep.is_largest and rep.size_rank == 2
    assert rep.sharpness == pytest.approx(1.8)
    largest = roi_report(region, 0, np.full(3, 1 / 3), labels, structure)
    assert largest.is_largest and largest.size_rank == 0 and largest.holds_structure is False
    assert largest.compartment_share == pytest.approx({1: 2 / 3, 2: 1 / 3}) and largest.sharpness == pytest.approx(1.0)
    assert roi_report(region, 0, np.full(3, 1 / 3), labels, np.zeros(9)).holds_structure is None
