"""Encode feature files with CARE and write per-slide results (the library side of ``care encode``)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from care_core.errors import FeatureFileError, MissingWeightsError

__all__ = ["encode_paths", "iter_encode_paths", "feature_files", "resolve_model", "OUTPUT_SUFFIXES"]

OUTPUT_SUFFIXES = ("_slide.npy", "_roi.npy", "_regions.csv", "_regions.geojson", "_encoding.npz")
_FEATURE_SUFFIXES = (".h5", ".hdf5")


def feature_files(inputs: Sequence[str | os.PathLike], *, allow_pickle: bool = False) -> list[Path]:
    """Expand files and folders into a sorted list of feature files (.h5/.hdf5; .npy too with allow_pickle)."""
    suffixes = _FEATURE_SUFFIXES + ((".npy",) if allow_pickle else ())
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise FeatureFileError(f"folder {str(item)!r} holds no feature files ({', '.join(suffixes)})")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise FeatureFileError(f"input {str(item)!r} does not exist")
    stems = Counter(p.stem for p in out)
    clashes = sorted(str(p) for p in out if stems[p.stem] > 1)
    if clashes:
        raise FeatureFileError(f"feature files {clashes} share a name, so their outputs would overwrite each other; "
                               "encode them into separate --out folders")
    return out


def resolve_model(model=None):
    """A CARE from a model, a checkpoint path, or None (the shipped demo checkpoint)."""
    from care_core.model.care import CARE
    from care_core.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint

    if isinstance(model, CARE):
        return model
    if model is None:
        if not DEMO_CHECKPOINT.with_name(DEMO_CHECKPOINT.name + ".safetensors").is_file():
            raise MissingWeightsError(
                f"no CARE checkpoint given and the demo checkpoint {DEMO_CHECKPOINT}.safetensors is not installed; "
                "pass --model PATH (a .safetensors + .json pair made by `care train` or save_checkpoint)"
            )
        model = DEMO_CHECKPOINT
    return load_checkpoint(model)


def _write_slide(enc, stem: str, out_dir: Path) -> list[Path]:
    from care_core._atomic import atomic_path
    from care_core.regions import write_geojson, write_region_csv

    def save_npy(path: Path, array: np.ndarray) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
        return path

    return [
        save_npy(out_dir / f"{stem}_slide.npy", enc.slide_embedding),
        save_npy(out_dir / f"{stem}_roi.npy", enc.roi_embedding),
        write_region_csv(enc, out_dir / f"{stem}_regions.csv"),
        write_geojson(enc, out_dir / f"{stem}_regions.geojson", name=stem),
        enc.save_npz(out_dir / f"{stem}_encoding.npz"),
    ]


def iter_encode_paths(
    inputs: Sequence[str | os.PathLike], model=None, out_dir: str | os.PathLike = ".", *, allow_pickle: bool = False
) -> Iterator[tuple[int, int, Path, list[Path]]]:
    """Generator form of ``encode_paths``: yields (index, total, feature file, written paths) per slide."""
    from care_core.features import load_features
    from care_core.model.checkpoint import check_features

    files = feature_files(inputs, allow_pickle=allow_pickle)
    care = resolve_model(model)
    meta = getattr(care, "checkpoint_meta", None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        features = load_features(path, allow_pickle=allow_pickle)
        if features.n_patches == 0:  # `care extract` writes these for slides without tissue
            warnings.warn(f"{path}: no patches (a slide without tissue); nothing to encode", stacklevel=2)
            yield i, len(files), path, []
            continue
        if meta is not None:
            check_features(meta, features)
        enc = care.encode(features)
        if meta is not None:
            enc.meta["checkpoint_sha256"] = meta.tensors_sha256
        yield i, len(files), path, _write_slide(enc, path.stem, out)


def encode_paths(
    inputs: Sequence[str | os.PathLike], model=None, out_dir: str | os.PathLike = ".", *, allow_pickle: bool = False
) -> list[Path]:
    """Encode every feature file in ``inputs`` (files or folders of .h5) and write, per slide ``<stem>``:
    ``_slide.npy`` (slide embedding [E]), ``_roi.npy`` (ROI feature [E]), ``_regions.csv``,
    ``_regions.geojson`` (QuPath) and ``_encoding.npz`` (everything, ``SlideEncoding.load_npz``).

    model: a CARE, a checkpoint path (``.safetensors``/``.json`` pair), or None for the demo checkpoint.
    allow_pickle: also read the authors' pickled ``.npy`` feature files (they can run code).
    Returns every written path, in order.
    """
    written: list[Path] = []
    for *_, paths in iter_encode_paths(inputs, model, out_dir, allow_pickle=allow_pickle):
        written.extend(paths)
    return written
