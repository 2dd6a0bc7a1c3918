"""Encode feature files with CARE and write per-slide results (the library side of ``care encode``).

Each slide's five outputs are written as one set: all temp files first, then renamed together, so a
failure (a full disk, an interrupt) leaves the slide's previous outputs or none, never a mix.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from care_core.errors import CareError, CheckpointError, FeatureFileError, MissingWeightsError, OutputError
from care_core.model.checkpoint import model_sha256

__all__ = ["encode_paths", "iter_encode_paths", "feature_files", "resolve_model", "model_sha256", "EncodeResult",
           "OUTPUT_SUFFIXES"]

OUTPUT_SUFFIXES = ("_slide.npy", "_roi.npy", "_regions.csv", "_regions.geojson", "_encoding.npz")
_FEATURE_SUFFIXES = (".h5", ".hdf5")


def feature_files(inputs: str | os.PathLike | Sequence[str | os.PathLike], *, allow_pickle: bool = False) -> list[Path]:
    """Expand files and folders (or one of them) into a sorted list of feature files (.h5/.hdf5; .npy too with
    allow_pickle)."""
    suffixes = _FEATURE_SUFFIXES + ((".npy",) if allow_pickle else ())
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
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


class EncodeResult(NamedTuple):
    """One feature file's outcome: `written` paths (empty when skipped or failed), `error` (one line, "" when
    it worked) and `note` (e.g. why it was skipped)."""

    index: int
    total: int
    path: Path
    written: list[Path]
    error: str = ""
    note: str = ""


def _check_encoding(enc, path: Path) -> None:
    """Refuse an encoding that would be written wrong (non-finite embedding or an ROI outside the regions)."""
    n = enc.n_regions
    if enc.roi is None or n is None or not 0 <= enc.roi < n:
        raise CheckpointError(f"{path}: CARE chose ROI {enc.roi} of {n} regions; its weights are not finite, so the "
                              "checkpoint is damaged or does not fit these features")
    if not (np.isfinite(enc.slide_embedding).all() and np.isfinite(enc.region_embeddings).all()):
        raise CheckpointError(f"{path}: CARE produced a non-finite embedding; the checkpoint is damaged or does not "
                              "fit these features")


def _write_slide(enc, stem: str, out_dir: Path) -> list[Path]:
    from care_core._atomic import atomic_paths, check_free_space
    from care_core.regions import write_geojson, write_region_csv

    def save_npy(path: Path, array: np.ndarray) -> None:
        with open(path, "wb") as fh:
            np.save(fh, array)

    paths = [out_dir / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    arrays = (getattr(enc, k) for k in ("slide_embedding", "region_embeddings", "coords", "grid", "candidates"))
    needed = 3 * sum(a.nbytes for a in arrays if a is not None) + (1 << 16)  # npz + npy + csv/geojson text
    with atomic_paths(paths, size_hint=needed) as tmps:
        check_free_space(out_dir, needed, paths[0])
        save_npy(tmps[0], enc.slide_embedding)
        save_npy(tmps[1], enc.roi_embedding)
        write_region_csv(enc, tmps[2])
        write_geojson(enc, tmps[3], name=stem)
        enc.save_npz(tmps[4])
    return paths


def _file_sha256(path: Path) -> str:
    from care_core.features.timm_encoders import sha256_file

    return sha256_file(path)


def _up_to_date(path: Path, out: Path, model_id: str) -> bool:
    """True when all of `path`'s outputs exist and its encoding records these very features and model."""
    import json

    paths = [out / f"{path.stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    if not all(p.is_file() for p in paths):
        return False
    try:
        with np.load(paths[-1], allow_pickle=False) as z:
            meta = json.loads(str(z["meta_json"]))
    except Exception:  # unreadable: redo it
        return False
    return meta.get("model_sha256") == model_id and meta.get("features_sha256") == _file_sha256(path)


def _encode_one(care, meta, path: Path, out: Path, allow_pickle: bool, model_id: str | None) -> tuple[list[Path], str]:
    """Written paths and a note for one feature file; raises CareError for a bad file. With `model_id`
    (resume), a file whose outputs are up to date is skipped."""
    from care_core.features import check_compatible, load_features
    from care_core.model.checkpoint import check_features

    if model_id is not None and _up_to_date(path, out, model_id):
        return [], "skipped (outputs up to date)"
    features = load_features(path, allow_pickle=allow_pickle)
    if features.n_patches == 0:  # `care extract` writes these for slides without tissue
        warnings.warn(f"{path}: no patches (a slide without tissue); nothing to encode", stacklevel=3)
        return [], "skipped (no patches)"
    if meta is not None:
        check_features(meta, features)
    else:
        check_compatible(features, dim=care.config.input_dim)
    enc = care.encode(features)
    _check_encoding(enc, path)
    if meta is not None:
        enc.meta["checkpoint_sha256"] = meta.sha256 or meta.tensors_sha256
    enc.meta["features_sha256"] = _file_sha256(path)
    enc.meta["model_sha256"] = model_id or model_sha256(care)
    return _write_slide(enc, path.stem, out), ""


def iter_encode_paths(
    inputs: Sequence[str | os.PathLike], model=None, out_dir: str | os.PathLike = ".", *, allow_pickle: bool = False,
    keep_going: bool = False, resume: bool = False,
) -> Iterator[EncodeResult]:
    """Generator form of ``encode_paths``: yields an ``EncodeResult`` per feature file.

    The output folder is checked and locked (a second encode into it fails with one line while this one runs) and
    temp files of killed runs removed, before the model is loaded.
    keep_going: a file that fails (unreadable, NaN features, wrong encoder...) gives a result with its
    one-line ``error`` and the next file goes on; otherwise the first failure raises. A full disk always
    raises (every later slide would fail the same way). resume: skip a file whose five outputs exist and
    record the same feature file (sha256) and model (``model_sha256``); its result has no ``written``.
    """
    from care_core._atomic import check_output_dir, folder_lock, remove_stale_temps

    files = feature_files(inputs, allow_pickle=allow_pickle)
    out = check_output_dir(out_dir)
    with folder_lock(out, what="care encode"):  # a second encode into this folder is refused, not interleaved
        stale = remove_stale_temps(out)
        if stale:
            warnings.warn(f"{out}: removed {len(stale)} temp file(s) left by killed runs", stacklevel=2)
        care = resolve_model(model)
        meta = getattr(care, "checkpoint_meta", None)
        model_id = model_sha256(care)
        for i, path in enumerate(files):
            try:
                written, note = _encode_one(care, meta, path, out, allow_pickle, model_id if resume else None)
            except OutputError:
                raise
            except Exception as exc:
                if not keep_going:
                    raise
                kind = "" if isinstance(exc, CareError) else f"{type(exc).__name__}: "
                yield EncodeResult(i, len(files), path, [], kind + " ".join(str(exc).split()))
                continue
            yield EncodeResult(i, len(files), path, written, "", note)


def encode_paths(
    inputs: Sequence[str | os.PathLike], model=None, out_dir: str | os.PathLike = ".", *, allow_pickle: bool = False
) -> list[Path]:
    """Encode every feature file in ``inputs`` (files or folders of .h5) and write, per slide ``<stem>``:
    ``_slide.npy`` (slide embedding [E]), ``_roi.npy`` (ROI feature [E]), ``_regions.csv``,
    ``_regions.geojson`` (QuPath) and ``_encoding.npz`` (everything, ``SlideEncoding.load_npz``), as one set.

    model: a CARE, a checkpoint path (``.safetensors``/``.json`` pair), or None for the demo checkpoint.
    allow_pickle: also read the authors' pickled ``.npy`` feature files (they can run code).
    Returns every written path, in order; the first bad file raises (``iter_encode_paths(keep_going=True)``
    goes on past it).
    """
    written: list[Path] = []
    for result in iter_encode_paths(inputs, model, out_dir, allow_pickle=allow_pickle):
        written.extend(result.written)
    return written
