"""Read patch-feature files: ours and TRIDENT's `.h5`, CLAM's `.h5`, and the CARE authors' pickled `.npy`."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core.errors import FeatureFileError
from care_core.features.store import FORMAT_NAME, PatchFeatures

__all__ = ["load_features", "infer_step_level0", "FeatureHeader", "read_feature_header"]

STANDARD_STEPS_LEVEL0 = (128, 224, 256, 448, 512, 896, 1024, 2048, 4096)  # usual patch sides in level-0 px
_CARE_NAME = re.compile(r"^(\d+)_(\d+)(?:_(\d+))?(?:\.\w+)?$")


def infer_step_level0(coords: np.ndarray) -> int:
    """Grid step in level-0 px from patch coordinates [N, 2].

    The most common positive difference between consecutive sorted unique x and y values, among the usual
    patch sides (128, 256, 512, 1024, ...); when none of those occurs, the most common positive difference.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    diffs = np.concatenate([np.diff(np.unique(coords[:, 0])), np.diff(np.unique(coords[:, 1]))])
    diffs = diffs[diffs > 0]
    if not len(diffs):
        raise FeatureFileError(
            f"cannot infer the patch step from {len(coords)} coordinate(s) with no positive spacing; "
            "pass patch_size_level0= to load_features"
        )
    counts = Counter(int(d) for d in diffs)
    standard = {d: n for d, n in counts.items() if d in STANDARD_STEPS_LEVEL0}
    pool = standard or counts
    return max(pool, key=lambda d: (pool[d], -d))


def load_features(
    path: str | os.PathLike, allow_pickle: bool = False, *, patch_size_level0: int | None = None
) -> PatchFeatures:
    """Read a feature file into `PatchFeatures`.

    `.h5`/`.hdf5`: ours, TRIDENT's or CLAM's (`features` [N, D] or [1, N, D], `coords` [N, 2]). Metadata are
    read from the root (ours) or where TRIDENT writes them: encoder and slide name on `features`, patch size,
    magnifications and level-0 size on `coords`; with no stored µm/px it is 10 / target_magnification (a
    warning says so). The grid step is the patch spacing when patches overlap, else `patch_size_level0`,
    else inferred from the coordinates. `.npy`: the CARE authors'
    pickled dict (`feature` [N, D], `index` names "x_y_size.png"), read only when `allow_pickle=True`.
    patch_size_level0 overrides the recorded or inferred grid step (level-0 px). Every file is checked:
    NaN/Inf/absurd features or negative coords raise FeatureFileError naming it; off-grid patches warn.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"feature file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        features = _load_h5(path, patch_size_level0)
    elif suffix == ".npy":
        features = _load_care_npy(path, allow_pickle, patch_size_level0)
    else:
        raise FeatureFileError(
            f"{str(path)!r}: unknown feature file type {suffix!r}; expected .h5 (napari-care, TRIDENT, CLAM) "
            "or .npy (CARE authors' format)"
        )
    features.check_values()
    features.check_coords()
    return features


def _attr_str(attrs, key: str) -> str:
    value = attrs.get(key, "")
    value = value.decode() if isinstance(value, bytes) else str(value)
    return "" if value == "None" else value  # TRIDENT writes a missing value as the string 'None'


def _spacing(coords: np.ndarray) -> int | None:
    """The most common positive spacing of the sorted unique x and y coordinates (None when there is none)."""
    diffs = np.concatenate([np.diff(np.unique(coords[:, 0])), np.diff(np.unique(coords[:, 1]))])
    diffs = diffs[diffs > 0]
    return int(Counter(diffs.tolist()).most_common(1)[0][0]) if len(diffs) else None


def _load_h5(path: Path, step_override: int | None) -> PatchFeatures:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(
            f"{str(path)!r} is not a readable HDF5 file (truncated or not HDF5: {str(exc).splitlines()[0]}); "
            "re-extract its features"
        ) from exc
    with f:
        missing = [k for k in ("features", "coords") if k not in f or not isinstance(f[k], h5py.Dataset)]
        if missing:
            raise FeatureFileError(
                f"{str(path)!r} lacks dataset(s) {missing} (found {sorted(f.keys())}); expected a TRIDENT/CLAM "
                "layout with 'features' [N, D] and 'coords' [N, 2]: re-extract it"
            )
        try:
            features = f["features"][()]
            coords = f["coords"][()]
            feat_attrs = dict(f["features"].attrs)
            coord_attrs = dict(f["coords"].attrs)
            root = dict(f.attrs)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise FeatureFileError(
                f"{str(path)!r}: cannot read its datasets ({str(exc).splitlines()[0]}); the file is damaged: "
                "re-extract it") from exc
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if (features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(features)
            or not np.issubdtype(features.dtype, np.number) or not np.issubdtype(coords.dtype, np.number)):
        raise FeatureFileError(
            f"{str(path)!r}: features {features.shape} {features.dtype} and coords {coords.shape} {coords.dtype} "
            "disagree; expected numeric features [N, D] (or [1, N, D]) and coords [N, 2]"
        )
    try:
        return _from_h5_parts(path, features, coords, feat_attrs, coord_attrs, root, step_override)
    except (TypeError, ValueError, IndexError, json.JSONDecodeError) as exc:
        if isinstance(exc, FeatureFileError):
            raise
        raise FeatureFileError(f"{str(path)!r}: an attribute is ill-typed ({exc}); re-extract the file") from exc


def _from_h5_parts(path, features, coords, feat_attrs, coord_attrs, root, step_override) -> PatchFeatures:
    """Metadata where we write it (root attributes) or where TRIDENT does (on the datasets)."""
    ours = _attr_str(root, "format") == FORMAT_NAME
    if ours and not np.issubdtype(coords.dtype, np.integer):
        raise FeatureFileError(f"{str(path)!r}: coords are {coords.dtype}, expected integers")
    coords = np.rint(coords).astype(np.int64) if not np.issubdtype(coords.dtype, np.integer) else coords
    extra = json.loads(_attr_str(root, "extra_json") or "{}") if ours else {"source_format": "trident/clam h5"}
    side = coord_attrs.get("patch_size_level0")
    if step_override is not None:
        step = int(step_override)
    elif "grid_step_level0" in root:
        step = int(root["grid_step_level0"])
    elif side is not None:
        step, spacing = int(side), _spacing(coords)
        if spacing is not None and spacing < step:  # overlapping patches: the grid is their spacing
            extra["patch_side_level0"] = step
            step = spacing
    else:
        step = infer_step_level0(coords)
    size = root.get("slide_size_level0")
    if size is None and "level0_width" in coord_attrs and "level0_height" in coord_attrs:
        size = (coord_attrs["level0_width"], coord_attrs["level0_height"])
    encoder, mpp, mpp_from_mag, patch_px = _provenance(root, feat_attrs, coord_attrs)
    if mpp_from_mag:
        extra["mpp_source"] = "10 / target_magnification"
        warnings.warn(f"{path}: no µm/px stored; taking 10 / target_magnification = {mpp:g} µm/px, as TRIDENT does",
                      stacklevel=3)
    name = _attr_str(feat_attrs, "name") or _attr_str(coord_attrs, "name")
    pf = PatchFeatures(
        features=features,
        coords=coords,
        patch_size_level0=step,
        mpp=mpp,
        patch_px=patch_px,
        encoder=encoder,
        weights_sha256=_attr_str(root, "weights_sha256"),
        slide_path=_attr_str(root, "slide_path") or name,
        slide_size_level0=(int(size[0]), int(size[1])) if size is not None else None,
        extra=extra,
        source=str(path),
    )
    if pf.mpp is not None and not (pf.mpp > 0 and np.isfinite(pf.mpp)):
        raise FeatureFileError(f"{str(path)!r}: mpp={pf.mpp} is not a positive number of µm/px; fix or re-extract it")
    return pf


def _provenance(root, feat_attrs, coord_attrs) -> tuple[str, float | None, bool, int | None]:
    """(encoder, mpp in µm/px, whether mpp is TRIDENT's 10 / target_magnification, patch_px) of an .h5 file's
    attributes, read where we write them (root) or where TRIDENT does (on the datasets)."""
    mpp, from_mag = root.get("mpp"), False
    target_mag = coord_attrs.get("target_magnification")
    if mpp is None and target_mag is not None and _attr_str(coord_attrs, "target_magnification"):
        mpp, from_mag = 10.0 / float(target_mag), True  # TRIDENT's convention: 20x = 0.5 µm/px
    patch_px = root.get("patch_px", coord_attrs.get("patch_size"))
    return (_attr_str(root, "encoder") or _attr_str(feat_attrs, "encoder"), float(mpp) if mpp is not None else None,
            from_mag, int(patch_px) if patch_px is not None else None)


@dataclass(frozen=True)
class FeatureHeader:
    """What a feature file says about its features without their values: shape and provenance.

    n_patches, dim: the features' shape [N, D]; encoder ("" when unknown); mpp in µm/px and patch_px in px at
    that mpp (None when unknown). Has the fields ``check_compatible`` reads, so it can be checked like
    ``PatchFeatures``.
    """

    source: str
    n_patches: int
    dim: int
    encoder: str = ""
    mpp: float | None = None
    patch_px: int | None = None

    @property
    def label(self) -> str:
        return self.source


def read_feature_header(path: str | os.PathLike) -> FeatureHeader:
    """The shape and provenance of a feature file, read from an .h5 file's attributes and dataset shapes only
    (milliseconds, whatever its size); other files are loaded with ``load_features``. Raises FeatureFileError
    naming the file when it is missing, not HDF5, or lacks 'features' [N, D] (or [1, N, D])."""
    import h5py

    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        pf = load_features(path)
        return FeatureHeader(str(path), pf.n_patches, pf.dim, pf.encoder, pf.mpp, pf.patch_px)
    try:
        with h5py.File(path, "r") as f:
            feats, found = f.get("features"), sorted(f.keys())
            ok = isinstance(feats, h5py.Dataset) and "coords" in f
            shape = (feats.shape[1:] if len(feats.shape) == 3 and feats.shape[0] == 1 else feats.shape) if ok else ()
            provenance = _provenance(dict(f.attrs), dict(feats.attrs), dict(f["coords"].attrs)) if ok else None
    except (OSError, TypeError, ValueError) as exc:
        raise FeatureFileError(f"{str(path)!r} is not a readable feature file ({str(exc).splitlines()[0]}); "
                               "re-extract its features") from exc
    if not ok:
        raise FeatureFileError(f"{str(path)!r} lacks dataset 'features' or 'coords' (found {found}); expected a "
                               "TRIDENT/CLAM layout: re-extract it")
    if len(shape) != 2:
        raise FeatureFileError(f"{str(path)!r}: features have shape {shape}; expected [N, D] (or [1, N, D])")
    encoder, mpp, _, patch_px = provenance
    return FeatureHeader(str(path), int(shape[0]), int(shape[1]), encoder, mpp, patch_px)


def _load_care_npy(path: Path, allow_pickle: bool, step_override: int | None) -> PatchFeatures:
    if not allow_pickle:
        raise FeatureFileError(
            f"{str(path)!r} is a pickled NumPy file (the CARE authors' format); unpickling can run arbitrary code, "
            "so it is refused by default: pass allow_pickle=True (CLI: --allow-pickle) only for files you trust"
        )
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as exc:
        raise FeatureFileError(f"{str(path)!r} is not a readable .npy file ({exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict) or "feature" not in obj or "index" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise FeatureFileError(
            f"{str(path)!r}: expected a pickled dict with 'feature' [N, D] and 'index' ['x_y_size.png', ...], "
            f"found {keys}"
        )
    features = np.asarray(obj["feature"], dtype=np.float32)
    coords, name_sizes = [], set()
    for name in obj["index"]:
        match = _CARE_NAME.match(Path(str(name)).name)
        if match is None:
            raise FeatureFileError(f"{str(path)!r}: patch name {name!r} is not of the form 'x_y_size.png'")
        coords.append((int(match[1]), int(match[2])))
        if match[3]:
            name_sizes.add(int(match[3]))
    coords_arr = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    step = int(step_override) if step_override is not None else infer_step_level0(coords_arr)
    extra = {"source_format": "care npy", "source_file": path.name}
    if name_sizes:
        extra["name_patch_size"] = sorted(name_sizes)
    return PatchFeatures(features=features, coords=coords_arr, patch_size_level0=step, extra=extra, source=str(path))
