"""Read patch-feature files: ours and TRIDENT's `.h5`, CLAM's `.h5`, and the CARE authors' pickled `.npy`."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from care_core.errors import FeatureFileError
from care_core.features.store import FORMAT_NAME, PatchFeatures

__all__ = ["load_features", "infer_step_level0"]

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

    `.h5`/`.hdf5`: ours, TRIDENT's or CLAM's (`features` [N, D] or [1, N, D], `coords` [N, 2]; the step is
    the `patch_size_level0` attribute, else inferred from the coordinates). `.npy`: the CARE authors'
    pickled dict (`feature` [N, D], `index` names "x_y_size.png"), read only when `allow_pickle=True`.
    patch_size_level0 overrides the recorded or inferred grid step (level-0 px).
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"feature file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _load_h5(path, patch_size_level0)
    if suffix == ".npy":
        return _load_care_npy(path, allow_pickle, patch_size_level0)
    raise FeatureFileError(
        f"{str(path)!r}: unknown feature file type {suffix!r}; expected .h5 (napari-care, TRIDENT, CLAM) "
        "or .npy (CARE authors' format)"
    )


def _attr_str(attrs, key: str) -> str:
    value = attrs.get(key, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_h5(path: Path, step_override: int | None) -> PatchFeatures:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(
            f"{str(path)!r} is not a readable HDF5 file (truncated or not HDF5: {exc}); re-extract its features"
        ) from exc
    with f:
        missing = [k for k in ("features", "coords") if k not in f]
        if missing:
            raise FeatureFileError(
                f"{str(path)!r} lacks dataset(s) {missing} (found {sorted(f.keys())}); expected a TRIDENT/CLAM "
                "layout with 'features' [N, D] and 'coords' [N, 2]"
            )
        try:
            features = f["features"][()]
            coords_ds = f["coords"]
            coords = coords_ds[()]
            coord_attrs = dict(coords_ds.attrs)
            root = dict(f.attrs)
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureFileError(f"{str(path)!r}: cannot read its datasets ({exc}); the file is damaged") from exc
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(features):
        raise FeatureFileError(
            f"{str(path)!r}: features {features.shape} and coords {coords.shape} disagree; "
            "expected features [N, D] (or [1, N, D]) and coords [N, 2]"
        )
    if step_override is not None:
        step = int(step_override)
    elif "patch_size_level0" in coord_attrs:
        step = int(coord_attrs["patch_size_level0"])
    else:
        step = infer_step_level0(coords)
    ours = _attr_str(root, "format") == FORMAT_NAME
    size = root.get("slide_size_level0")
    mpp = root.get("mpp")
    patch_px = root.get("patch_px", coord_attrs.get("patch_size"))
    extra = json.loads(_attr_str(root, "extra_json") or "{}") if ours else {"source_format": "trident/clam h5"}
    return PatchFeatures(
        features=features,
        coords=coords,
        patch_size_level0=step,
        mpp=float(mpp) if mpp is not None else None,
        patch_px=int(patch_px) if patch_px is not None else None,
        encoder=_attr_str(root, "encoder"),
        weights_sha256=_attr_str(root, "weights_sha256"),
        slide_path=_attr_str(root, "slide_path"),
        slide_size_level0=(int(size[0]), int(size[1])) if size is not None else None,
        extra=extra,
    )


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
    return PatchFeatures(features=features, coords=coords_arr, patch_size_level0=step, extra=extra)
