"""The feature store: `PatchFeatures`, patch features of one slide plus what made them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PatchFeatures"]


@dataclass
class PatchFeatures:
    """Frozen patch features of one slide.

    features: [N, D] float32 (or float16) patch embeddings.
    coords: [N, 2] int64 level-0 pixel (x, y) of each patch's top-left corner.
    patch_size_level0: side of one patch in level-0 pixels (the grid step).
    mpp: µm/px at which the patches were encoded (None when unknown, e.g. foreign files).
    patch_px: side of one patch in pixels at `mpp` (what the encoder saw before resizing).
    encoder: name of the patch encoder ("" when unknown); weights_sha256: hash of its weights.
    slide_path, slide_size_level0: the source slide and its level-0 (width, height).
    """

    features: np.ndarray
    coords: np.ndarray
    patch_size_level0: int
    mpp: float | None = None
    patch_px: int | None = None
    encoder: str = ""
    weights_sha256: str = ""
    slide_path: str = ""
    slide_size_level0: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features)
        self.coords = np.asarray(self.coords, dtype=np.int64).reshape(-1, 2)
        if self.features.ndim != 2 or len(self.features) != len(self.coords):
            raise ValueError(
                f"features {self.features.shape} and coords {self.coords.shape} disagree: "
                "expected features [N, D] and coords [N, 2]"
            )
        if int(self.patch_size_level0) <= 0:
            raise ValueError(f"patch_size_level0={self.patch_size_level0} must be a positive integer")
        self.patch_size_level0 = int(self.patch_size_level0)

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def grid_indices(self) -> np.ndarray:
        """[N, 2] integer grid (col, row) of each patch: coords // patch_size_level0, shifted to start at 0."""
        g = self.coords // self.patch_size_level0
        return g - g.min(axis=0) if len(g) else g
