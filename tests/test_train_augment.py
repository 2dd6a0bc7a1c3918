"""Stage I augmentations and block masks on hand-made features and grids with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.train.augment import brightness, contrast, flip_rotate, patch_dropout, posterize
from care_core.train.masking import block_mask, view_mask


def full_grid(w: int, h: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


X = np.array([[0.0, 10.0, 5.0], [1.2, 20.0, 5.0], [2.6, 30.0, 5.0], [4.0, 40.0, 5.0]], dtype=np.float32)


def test_brightness_scales_each_channel():
    out = brightness(X, np.array([2.0, 0.5, 1.0]))
    np.testing.assert_array_equal(out, X * np.array([2.0, 0.5, 1.0], dtype=np.float32))
    assert out.dtype == np.float32


def test_contrast_scales_around_the_view_channel_mean():
    out = contrast(X, 2.0)  # channel 1: mean 25 -> 25 + 2 * (x - 25)
    np.testing.assert_allclose(out[:, 1], [-5.0, 15.0, 35.0, 55.0])
    np.testing.assert_allclose(out[:, 2], 5.0)  # a constant channel stays
    np.testing.assert_allclose(out.mean(axis=0), X.mean(axis=0), rtol=1e-6)


def test_posterize_two_levels_gives_each_channel_min_or_max():
    out = posterize(X, 2)
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0, 4.0, 4.0])  # 1.2 is nearer 0, 2.6 nearer 4
    np.testing.assert_allclose(out[:, 1], [10.0, 10.0, 40.0, 40.0])  # 20 -> 1/3 -> 0; 30 -> 2/3 -> 1
    np.testing.assert_array_equal(out[:, 2], X[:, 2])
    assert all(len(np.unique(out[:, c])) <= 2 for c in range(3))


def test_posterize_three_levels():
    out = posterize(X, 3)  # channel 0 over [0, 4]: levels 0, 2, 4
    np.testing.assert_allclose(out[:, 0], [0.0, 2.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="at least 2 levels"):
        posterize(X, 1)


def test_quarter_turn_of_a_row_is_a_column_read_upwards():
    row = np.array([[5, 3], [6, 3], [7, 3]])
    np.testing.assert_array_equal(flip_rotate(row, quarter_turns=1), [[0, 2], [0, 1], [0, 0]])
    np.testing.assert_array_equal(flip_rotate(row, quarter_turns=2), [[2, 0], [1, 0], [0, 0]])


def test_l_shape_turns_and_flips():
    ell = np.array([[0, 0], [0, 1], [1, 1]])  # X. / XX on screen (rows grow downwards)
    np.testing.assert_array_equal(flip_rotate(ell, quarter_turns=1), [[0, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(flip_rotate(ell, quarter_turns=3), [[1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(flip_rotate(ell, flip_x=True), [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(flip_rotate(ell, flip_y=True), [[0, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(flip_rotate(ell + 7, quarter_turns=4), ell)  # shifted to 0


def test_patch_dropout_drops_floor_of_ratio_and_keeps_one():
    rng = np.random.default_rng(0)
    kept = patch_dropout(10, 0.25, rng)
    assert len(kept) == 8 and np.all(np.diff(kept) > 0) and kept.max() < 10
    assert patch_dropout(3, 0.99, rng).size == 1
    np.testing.assert_array_equal(patch_dropout(5, 0.1, rng), np.arange(5))


def test_block_mask_masks_exactly_the_ratio_and_is_reproducible():
    grid = full_grid(20, 20)
    for ratio in (0.1, 0.3, 0.5):
        m = block_mask(grid, ratio, np.random.default_rng(1))
        assert m.dtype == bool and m.sum() == round(ratio * 400)
        np.testing.assert_array_equal(m, block_mask(grid, ratio, np.random.default_rng(1)))
    assert not block_mask(grid, 0.0, np.random.default_rng(1)).any()
    assert not np.array_equal(block_mask(grid, 0.3, np.random.default_rng(1)), block_mask(grid, 0.3, np.random.default_rng(2)))


def test_block_mask_is_blocky():
    """Masked cells have masked 4-neighbours far more often than a random mask of the same size."""
    grid = full_grid(20, 20)

    def neighbour_share(m):
        img = m.reshape(20, 20)
        pad = np.pad(img, 1)
        nb = pad[:-2, 1:-1].astype(int) + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        return (nb[img] / 4).mean()

    rng = np.random.default_rng(3)
    block = neighbour_share(block_mask(grid, 0.3, rng))
    random = neighbour_share(np.isin(np.arange(400), rng.choice(400, 120, replace=False)))
    assert block > 0.6 and random < 0.4


def test_one_small_block_is_one_rectangle_prefix():
    m = block_mask(full_grid(10, 10), 0.04, np.random.default_rng(0))  # 4 patches: one rectangle
    rows, cols = np.nonzero(m.reshape(10, 10))
    assert m.sum() == 4 and np.ptp(rows) <= 3 and np.ptp(cols) <= 3


def test_sparse_grid_still_gets_the_exact_count():
    grid = np.array([[0, 0], [50, 0], [0, 50], [50, 50], [25, 25]])  # rectangles rarely hit a patch
    m = block_mask(grid, 0.6, np.random.default_rng(0))
    assert m.sum() == 3


def test_view_mask_probability_and_ratio_range():
    grid = full_grid(10, 10)
    assert not view_mask(grid, np.random.default_rng(0), prob=0.0, ratio_range=(0.1, 0.5)).any()
    counts = [view_mask(grid, np.random.default_rng(s), prob=1.0, ratio_range=(0.1, 0.5)).sum() for s in range(20)]
    assert min(counts) >= 10 and max(counts) <= 50 and len(set(counts)) > 5
    masked = [view_mask(grid, np.random.default_rng(s), prob=0.5, ratio_range=(0.2, 0.2)).any() for s in range(200)]
    assert 70 < sum(masked) < 130
    with pytest.raises(ValueError, match="mask ratio=1.0"):
        block_mask(grid, 1.0, np.random.default_rng(0))
