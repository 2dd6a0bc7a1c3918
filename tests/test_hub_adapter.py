"""Fault 9: the authors' model is called as they call it, model(features, N_values, grid_indices), and its
`wsi_embedding` is read; checked against a stand-in module with exactly that signature."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from care_core.errors import CheckpointError, FeatureFileError
from care_core.features import PatchFeatures
from care_core.model import AuthorsModelAdapter


class StandIn(torch.nn.Module):
    """The released model's call: features [B, N, D], N_values [B], grid_indices [B, N, 2] -> .wsi_embedding."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, 4)
        self.seen = None

    def forward(self, features, N_values, grid_indices):  # noqa: N803 (their argument name)
        self.seen = (features, N_values, grid_indices)
        weights = (grid_indices[..., 0] + 1).float()  # the output depends on the grid, so a wrong grid shows
        pooled = (self.proj(features) * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        return SimpleNamespace(wsi_embedding=pooled, other=None)


def _features(x0: int = 1000) -> PatchFeatures:
    coords = np.array([[0, 0], [512, 0], [1024, 0], [0, 512], [512, 512]]) + (x0, 700)
    feats = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    return PatchFeatures(feats, coords, 512, mpp=0.5, patch_px=512, encoder="conch_v15", slide_path="s.svs")


def test_called_with_features_n_values_and_level0_coords_floor_divided_by_the_patch_size():
    model, pf = StandIn().eval(), _features()
    enc = AuthorsModelAdapter(model, Path("snap")).encode(pf)
    x, n, grid = model.seen
    assert x.shape == (1, 5, 16) and x.dtype == torch.float32
    assert n.tolist() == [5] and n.dtype == torch.int64
    assert grid.dtype == torch.int64 and grid[0].tolist() == [[1, 1], [2, 1], [3, 1], [1, 2], [2, 2]]  # 1000 // 512 = 1
    w = torch.tensor([2.0, 3.0, 4.0, 2.0, 3.0])[:, None]
    expected = (model.proj(torch.from_numpy(pf.features)) * w).sum(0) / w.sum()
    np.testing.assert_allclose(enc.slide_embedding, expected.detach().numpy(), rtol=1e-6)
    assert enc.roi is None and enc.meta["model"] == "snap" and enc.grid.tolist()[0] == [0, 0]


def test_overlapping_patches_use_the_patch_side_as_trident_does():
    model, pf = StandIn().eval(), _features(x0=0)
    pf.patch_size_level0, pf.extra["patch_side_level0"] = 256, 512
    AuthorsModelAdapter(model, Path("snap")).encode(pf)
    assert model.seen[2][0, :, 0].tolist() == [0, 1, 2, 0, 1]


def test_output_without_wsi_embedding_and_bad_features_are_project_errors():
    class Other(StandIn):
        def forward(self, features, N_values, grid_indices):  # noqa: N803
            return {"slide_embedding": features.mean(1)}

    with pytest.raises(CheckpointError, match=r"the model in snap returned dict without `wsi_embedding`"):
        AuthorsModelAdapter(Other(), Path("snap")).encode(_features())
    pf = _features()
    pf.features[2, 3] = np.inf
    with pytest.raises(FeatureFileError, match=r"^s\.svs: 1 of 5 patch feature rows hold NaN, Inf"):
        AuthorsModelAdapter(StandIn(), Path("snap")).encode(pf)
