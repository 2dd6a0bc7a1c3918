"""The feature store: `PatchFeatures`, patch features of one slide plus what made them."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import FeatureFileError, FeatureMismatchError

__all__ = ["PatchFeatures", "check_compatible", "FORMAT_NAME"]

FORMAT_NAME = "napari-care-features/1"  # root attribute `format` of the .h5 files we write


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
        """[N, 2] integer grid (col, row) of each patch: its offset from the top-left patch in steps of
        patch_size_level0, rounded (grids need not start at a multiple of the step). Two patches in one cell
        raise FeatureFileError: the coords are not a grid of this step."""
        if not len(self.coords):
            return self.coords.copy()
        g = np.rint((self.coords - self.coords.min(axis=0)) / self.patch_size_level0).astype(np.int64)
        if len(np.unique(g, axis=0)) < len(g):
            raise FeatureFileError(
                f"{self.slide_path or 'these features'}: several patches fall in one grid cell of "
                f"{self.patch_size_level0} level-0 px; the coords are not a patch grid of that step "
                "(pass the right patch_size_level0 when loading)"
            )
        return g

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.h5, TRIDENT layout) atomically: a temp file in the same folder, then `os.replace`.

        Datasets `features` [N, D] and `coords` [N, 2] int64 (attribute `patch_size_level0`); the metadata
        (mpp, patch_px, encoder, weights_sha256, slide path/size, package version, extra) are root attributes.
        """
        import h5py

        from care_core import __version__

        path = Path(path)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=self.features)
            coords = f.create_dataset("coords", data=self.coords.astype(np.int64))
            coords.attrs["patch_size_level0"] = self.patch_size_level0
            if self.patch_px is not None:
                coords.attrs["patch_size"] = int(self.patch_px)
            attrs = f.attrs
            attrs["format"] = FORMAT_NAME
            attrs["encoder"] = self.encoder
            attrs["weights_sha256"] = self.weights_sha256
            attrs["slide_path"] = self.slide_path
            attrs["care_version"] = __version__
            if self.mpp is not None:
                attrs["mpp"] = float(self.mpp)
            if self.patch_px is not None:
                attrs["patch_px"] = int(self.patch_px)
            if self.slide_size_level0 is not None:
                attrs["slide_size_level0"] = np.asarray(self.slide_size_level0, dtype=np.int64)
            attrs["extra_json"] = json.dumps(self.extra, sort_keys=True, default=str)
        return path


def _norm_encoder(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def check_compatible(
    features: PatchFeatures,
    *,
    dim: int | None = None,
    encoder: str | None = None,
    mpp: float | None = None,
    patch_px: int | None = None,
    mpp_rtol: float = 0.1,
) -> None:
    """Raise `FeatureMismatchError` naming both sides when `features` do not fit what a consumer expects.

    dim: feature dimension the consumer takes; encoder: the encoder it was trained on (names compare
    case- and dash/underscore-insensitively; features of unknown encoder only warn); mpp: µm/px it expects
    (relative tolerance `mpp_rtol`); patch_px: patch side in px at that mpp.
    """
    src = features.slide_path or "these features"
    if dim is not None and features.dim != int(dim):
        raise FeatureMismatchError(
            f"{src}: features are {features.dim}-d (encoder {features.encoder or 'unknown'!r}) but the model "
            f"expects {int(dim)}-d features; extract features with the encoder the model was trained on"
        )
    if encoder is not None:
        if not features.encoder:
            warnings.warn(f"{src}: feature file does not record its encoder; cannot check it is {encoder!r}",
                          stacklevel=2)
        elif _norm_encoder(features.encoder) != _norm_encoder(encoder):
            raise FeatureMismatchError(
                f"{src}: features come from encoder {features.encoder!r} but {encoder!r} is required; "
                f"re-extract with --encoder {encoder}"
            )
    if mpp is not None and features.mpp is not None and abs(features.mpp - mpp) > mpp_rtol * mpp:
        raise FeatureMismatchError(
            f"{src}: features were encoded at {features.mpp:g} µm/px but {mpp:g} µm/px is required"
        )
    if patch_px is not None and features.patch_px is not None and features.patch_px != int(patch_px):
        raise FeatureMismatchError(
            f"{src}: patches are {features.patch_px} px but {int(patch_px)} px patches are required"
        )
