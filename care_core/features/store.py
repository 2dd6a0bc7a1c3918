"""The feature store: `PatchFeatures`, patch features of one slide plus what made them."""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path, check_free_space
from care_core.errors import FeatureFileError, FeatureMismatchError

__all__ = ["PatchFeatures", "check_compatible", "FORMAT_NAME", "MAX_ABS_FEATURE"]

FORMAT_NAME = "napari-care-features/1"  # root attribute `format` of the .h5 files we write
MAX_ABS_FEATURE = 1e6  # larger magnitudes are not patch embeddings (they overflow CARE's float32 attention)
OFF_GRID_TOL = 0.05  # a patch more than this fraction of a step off its grid cell is reported


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
    source: the file these features were read from ("" when made in memory); messages name it first.
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
    source: str = ""

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

    @property
    def label(self) -> str:
        """What messages call these features: the file they came from, else their slide."""
        return self.source or self.slide_path or "these features"

    def check_values(self) -> None:
        """Raise FeatureFileError when a row holds NaN, ±Inf or a value beyond ±MAX_ABS_FEATURE (such rows
        would turn every CARE output into NaN); the message names the file, the row count and what to do."""
        n, bad = self.n_patches, np.zeros(self.n_patches, bool)
        dtype = self.features.dtype  # float16 cannot hold the limit itself: compare within its range
        limit = min(MAX_ABS_FEATURE, float(np.finfo(dtype).max)) if np.issubdtype(dtype, np.floating) else MAX_ABS_FEATURE
        for i in range(0, n, 8192):  # bounded memory for large slides
            chunk = self.features[i: i + 8192]
            bad[i: i + 8192] = ~(np.isfinite(chunk) & (np.abs(chunk) <= limit)).all(axis=1)
        if bad.any():
            fix = ("re-extract it" if self.source else
                   f"check encoder {self.encoder or 'unknown'!r} and its weights, which produced them")
            raise FeatureFileError(
                f"{self.label}: {int(bad.sum())} of {n} patch feature rows hold NaN, Inf or values beyond "
                f"±{MAX_ABS_FEATURE:g} (first bad row {int(np.argmax(bad))}); these are not usable features: {fix}"
            )

    def check_coords(self) -> None:
        """Raise FeatureFileError for negative level-0 coords (not positions on a slide); warn when patches
        lie off the grid of `patch_size_level0` (they are placed in the nearest cell)."""
        if not self.n_patches:
            return
        neg = (self.coords < 0).any(axis=1)
        if neg.any():
            x, y = self.coords.min(axis=0)
            raise FeatureFileError(
                f"{self.label}: {int(neg.sum())} of {self.n_patches} patches have negative level-0 coords (down to "
                f"x={x}, y={y}); coords must be top-left pixel positions on the slide: fix or re-extract the file"
            )
        step = self.patch_size_level0
        rem = (self.coords - self.coords.min(axis=0)) % step
        off = np.minimum(rem, step - rem).max(axis=1)
        n_off = int((off > OFF_GRID_TOL * step).sum())
        if n_off:
            warnings.warn(
                f"{self.label}: {n_off} of {self.n_patches} patches lie off the {step}-px grid (by up to "
                f"{int(off.max())} level-0 px); each is placed in its nearest grid cell",
                stacklevel=2,
            )

    def grid_indices(self) -> np.ndarray:
        """[N, 2] integer grid (col, row) of each patch: its offset from the top-left patch in steps of
        patch_size_level0, rounded (grids need not start at a multiple of the step). Two patches in one cell
        raise FeatureFileError: the coords are not a grid of this step."""
        if not len(self.coords):
            return self.coords.copy()
        g = np.rint((self.coords - self.coords.min(axis=0)) / self.patch_size_level0).astype(np.int64)
        if len(np.unique(g, axis=0)) < len(g):
            raise FeatureFileError(
                f"{self.label}: several patches fall in one grid cell of "
                f"{self.patch_size_level0} level-0 px; the coords are not a patch grid of that step "
                "(pass the right patch_size_level0 when loading)"
            )
        return g

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.h5, TRIDENT layout plus our provenance) atomically: a temp file, then `os.replace`.

        Datasets `features` [N, D] (attributes `encoder`, `name` as TRIDENT writes them) and `coords` [N, 2]
        int64 (attributes `patch_size_level0`, `patch_size`, `level0_magnification`, `target_magnification`,
        `overlap`, `name`, `level0_width`, `level0_height`, as TRIDENT's patcher writes them); our metadata
        (format, mpp, patch_px, encoder, weights_sha256, slide path/size, grid step, package version, extra) are root
        attributes. Features with NaN/Inf/absurd values are refused. The file is built in memory and written
        in one go, so a full disk gives one `OutputError` (and never a half-written HDF5 file); the disk's
        free space is checked first.
        """
        import h5py

        from care_core import __version__

        self.check_values()
        path = Path(path)
        name = Path(self.slide_path).stem if self.slide_path else path.stem
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            feats = f.create_dataset("features", data=self.features)
            feats.attrs["encoder"] = self.encoder
            feats.attrs["name"] = name
            coords = f.create_dataset("coords", data=self.coords.astype(np.int64))
            side = int(self.extra.get("patch_side_level0", self.patch_size_level0))  # > step when patches overlap
            cattrs = coords.attrs
            cattrs["patch_size_level0"] = side
            cattrs["name"] = name
            cattrs["overlap"] = 0
            if self.patch_px is not None:
                cattrs["patch_size"] = int(self.patch_px)
                cattrs["overlap"] = int(round((side - self.patch_size_level0) * int(self.patch_px) / side))
            if self.mpp is not None and self.patch_px is not None:  # TRIDENT's convention: magnification = 10 / mpp
                target_mag = 10.0 / float(self.mpp)
                cattrs["target_magnification"] = _tidy(target_mag)
                cattrs["level0_magnification"] = _tidy(target_mag * side / int(self.patch_px))
            if self.slide_size_level0 is not None:
                cattrs["level0_width"], cattrs["level0_height"] = (int(v) for v in self.slide_size_level0)
            attrs = f.attrs
            attrs["format"] = FORMAT_NAME
            attrs["encoder"] = self.encoder
            attrs["weights_sha256"] = self.weights_sha256
            attrs["slide_path"] = self.slide_path
            attrs["care_version"] = __version__
            attrs["grid_step_level0"] = self.patch_size_level0
            if self.mpp is not None:
                attrs["mpp"] = float(self.mpp)
            if self.patch_px is not None:
                attrs["patch_px"] = int(self.patch_px)
            if self.slide_size_level0 is not None:
                attrs["slide_size_level0"] = np.asarray(self.slide_size_level0, dtype=np.int64)
            attrs["extra_json"] = json.dumps(self.extra, sort_keys=True, default=str)
        data = buf.getbuffer()
        with atomic_path(path, size_hint=len(data)) as tmp:
            check_free_space(path.parent, len(data), path)
            with open(tmp, "wb") as fh:
                fh.write(data)
        return path


def _tidy(value: float) -> float | int:
    """An integer when `value` is one (to 1e-6), else `value` rounded to 6 decimals."""
    return int(round(value)) if abs(value - round(value)) < 1e-6 else round(value, 6)


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
    src = features.label
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
