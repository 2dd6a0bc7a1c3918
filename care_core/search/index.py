"""Building a region index: one shard per slide (``<slide>.npz``) and ``index.json``, added or replaced one slide
at a time, each file written atomically, under the folder's lock (a build stopped anywhere leaves an index of the
slides it finished)."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError

__all__ = ["build_index", "remove_slides", "REPRESENTATIONS", "representation_of", "region_vectors", "read_index_json",
           "check_same_model", "model_of", "slide_name", "predicted_classes", "INDEX_JSON"]

INDEX_JSON = "index.json"
FORMAT = "care-region-index/1"
_SUFFIX = "_encoding.npz"
# what a region is searched by: the mean ARSA output of its patches (default: on held-out synthetic slides its
# 10 nearest share the region's compartment 0.89 of the time, against 0.82 for g^AR and 0.88 for the mean
# patch feature), or the paper's region embedding g^AR ([CLS] output; indexes made before the choice existed)
REPRESENTATIONS = {"tokens": "region_token_means", "cls": "region_embeddings"}


def representation_of(index: dict) -> str:
    """The representation an index searches ("cls" for indexes made before there was a choice)."""
    return index.get("representation", "cls")


def region_vectors(encoding, representation: str, what: str) -> np.ndarray:
    """[R, E] the vectors ``representation`` names of ``encoding``'s regions; InvalidInputError (one line) when
    the encoding lacks them (made before encodings kept their regions' mean tokens)."""
    vectors = getattr(encoding, REPRESENTATIONS[representation])
    if vectors is None:
        raise _no_tokens(what)
    return np.asarray(vectors, dtype=np.float32)


def _no_tokens(what: str) -> InvalidInputError:
    return InvalidInputError(f"{what}: holds no region mean tokens (encoded before they were kept); encode it "
                             "again (care encode or care predict), or use an index of --representation cls")


def slide_name(path: Path) -> str:
    return path.name[: -len(_SUFFIX)] if path.name.endswith(_SUFFIX) else path.stem


def _inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(encoding .npz files, feature .h5 files) named by ``inputs`` (files or folders of them)."""
    encodings, features = [], []
    for item in map(Path, inputs):
        files = sorted(item.iterdir()) if item.is_dir() else [item] if item.is_file() else None
        if files is None:
            raise InvalidInputError(f"input {str(item)!r} does not exist; give encodings (<slide>_encoding.npz), "
                                    "feature files (.h5) or folders of them")
        found = [p for p in files if p.name.endswith(".npz") and (p.name.endswith(_SUFFIX) or not item.is_dir())]
        h5 = [p for p in files if p.suffix.lower() in (".h5", ".hdf5")]
        if not found and not h5:
            raise InvalidInputError(f"input {str(item)!r} holds no encodings (<slide>_encoding.npz) or feature files "
                                    "(.h5); run care encode first")
        encodings += found
        features += h5
    return encodings, features


def model_of(meta: dict) -> tuple[str, str]:
    """(CARE model sha256, patch encoder) an encoding records ("" when unknown)."""
    return str(meta.get("model_sha256") or meta.get("checkpoint_sha256") or ""), str(meta.get("encoder") or "")


def check_same_model(index: dict, model: str, encoder: str, what: str) -> None:
    """Raise InvalidInputError (one line, both sides named) when ``what`` came from another CARE model or patch
    encoder than the index (the rule heads follow)."""
    if index.get("model_sha256") and model and model != index["model_sha256"]:
        raise InvalidInputError(f"{what} was encoded with CARE model {model[:12]}… but the index holds model "
                                f"{index['model_sha256'][:12]}…; encode it with the index's checkpoint, or build "
                                "another index")
    if index.get("encoder") and encoder and encoder != index["encoder"]:
        raise InvalidInputError(f"{what} comes from patch encoder {encoder!r} but the index holds {index['encoder']!r}; "
                                "re-extract its features with the index's encoder, or build another index")


def predicted_classes(encoding) -> np.ndarray:
    """[R] str: "<head>: <class>" of the first head with region predictions, "" without one."""
    n = len(encoding.region_embeddings)
    for pred in encoding.predictions:
        if pred.region_class is not None and len(pred.region_class) == n:
            return np.array([f"{pred.head}: {pred.classes[c]}" for c in pred.region_class], dtype=str)
    return np.full(n, "", dtype=str)


def _absolute(slide_path: str) -> str:
    """A relative slide path made absolute when it names a file from here (the gallery then finds the slide
    from any working folder); otherwise as recorded."""
    path = Path(slide_path)
    return str(path.resolve()) if slide_path and not path.is_absolute() and path.is_file() else slide_path


def _write_shard(encoding, path: Path, representation: str) -> int:
    """One slide's shard; its ``region_embeddings`` are the vectors ``representation`` names."""
    from care_core._atomic import atomic_path
    from care_core.regions.geometry import region_extents

    arrays = dict(region_embeddings=region_vectors(encoding, representation, str(path)),
                  slide_embedding=np.asarray(encoding.slide_embedding, dtype=np.float32),
                  predicted=predicted_classes(encoding), **region_extents(encoding),
                  # each patch's top-left and region, for the outline on a result's thumbnail
                  patch_xy=np.asarray(encoding.coords, dtype=np.int32),
                  patch_region=np.asarray(encoding.patch_region, dtype=np.int32),
                  patch_size_level0=np.int64(encoding.patch_size_level0))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return len(arrays["region_embeddings"])


def read_index_json(folder: str | os.PathLike) -> dict:
    """The ``index.json`` of index ``folder``; InvalidInputError (one line) when it is not an index."""
    path = Path(folder) / INDEX_JSON
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{folder}: not a region index (no {INDEX_JSON}); build one with care index") from None
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"{path}: unreadable ({type(err).__name__}); build the index again with care index") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: not a region index of this napari-care (format {FORMAT}); build it again")
    return index


def _save_index_json(folder: Path, index: dict) -> None:
    from care_core._atomic import atomic_path

    with atomic_path(folder / INDEX_JSON) as tmp:
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))


def _encode_features(features: list[Path], model, out: Path, scheduler: str | None = None,
                     n_workers: int = 0) -> list[Path]:
    """Encode feature files into ``out``/encodings (slides already encoded with this model are skipped): in this
    process, or as one dask task per file on ``scheduler`` or a local cluster of ``n_workers`` (>= 2)."""
    from care_core.encode import iter_encode_paths

    folder = out / "encodings"
    if scheduler is None and n_workers < 2:
        list(iter_encode_paths(features, model, folder, resume=True))
    else:
        _encode_on_cluster(features, model, folder, scheduler, n_workers)
    return [folder / f"{p.stem}{_SUFFIX}" for p in features if (folder / f"{p.stem}{_SUFFIX}").is_file()]


def _encode_on_cluster(features: list[Path], model, folder: Path, scheduler: str | None, n_workers: int) -> None:
    """``care encode`` of ``features`` into ``folder`` as dask tasks (as ``care extract`` runs slides), each
    worker loading the checkpoint once; the first bad file raises its error here."""
    from distributed import as_completed

    from care_core._atomic import check_output_dir, folder_lock, remove_stale_temps
    from care_core.encode import resolve_model
    from care_core.features.cohort import dask_client
    from care_core.model.checkpoint import DEMO_CHECKPOINT, model_sha256

    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise InvalidInputError("a build on a cluster takes the CARE model as a checkpoint path (each worker loads it)")
    checkpoint = str(model if model is not None else DEMO_CHECKPOINT)
    model_id = model_sha256(resolve_model(checkpoint))  # a bad checkpoint fails here, before the cluster starts
    folder = check_output_dir(folder)
    with folder_lock(folder, what="care encode"), dask_client(scheduler, n_workers) as client:
        remove_stale_temps(folder)
        futures = [client.submit(_encode_task, str(p), checkpoint, str(folder), model_id, pure=False,
                                 key=f"care-index-{p.stem}-{os.getpid()}-{time.time_ns()}") for p in features]
        for future in as_completed(futures):
            future.result()


@functools.lru_cache(maxsize=2)
def _worker_model(checkpoint: str):
    from care_core.encode import resolve_model

    return resolve_model(checkpoint)


def _encode_task(path: str, checkpoint: str, out: str, model_id: str) -> str:
    """One feature file encoded in a dask worker (skipped when its outputs are up to date); returns a note."""
    from care_core.encode import _encode_one

    care = _worker_model(checkpoint)
    return _encode_one(care, getattr(care, "checkpoint_meta", None), Path(path), Path(out), False, model_id)[1]


def build_index(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, model=None,
                progress: Callable[[str, str], None] | None = None, scheduler: str | None = None,
                n_workers: int = 0, representation: str | None = None) -> dict:
    """Add the slides of ``inputs`` (``<slide>_encoding.npz`` files, feature .h5 files, or folders of them) to the
    region index ``out`` (created when new); returns its ``index.json`` content.

    Feature files are first encoded with ``model`` (a checkpoint path or CARE; None: the demo checkpoint) into
    ``out``/encodings: in this process, or as one dask task per file on the dask ``scheduler`` (tcp://host:port)
    or a local cluster of ``n_workers`` processes (>= 2; then ``model`` must be a path). A slide whose source encoding is unchanged (same sha256) is skipped, a changed one
    replaces its shard, the others are untouched. Every encoding must come from the index's CARE model and
    patch encoder (InvalidInputError otherwise, before anything is written). progress(slide, "added" |
    "replaced" | "unchanged") after each slide. representation: what regions are searched by,
    ``REPRESENTATIONS`` (None: the index's own; "tokens" for a new index); another than the index's is refused.
    """
    from care_core._atomic import check_output_dir, folder_lock, remove_stale_temps
    from care_core.features.timm_encoders import sha256_file
    from care_core.regions.bundle import read_encoding_file

    encodings, features = _inputs(inputs)
    folder = check_output_dir(out)
    with folder_lock(folder, what="care index"):
        remove_stale_temps(folder)
        if features:
            encodings += _encode_features(features, model, folder, scheduler, n_workers)
        names = [slide_name(p) for p in encodings]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise InvalidInputError(f"several encodings are named {clash}; a slide name must be unique in an index")
        index = read_index_json(folder) if (folder / INDEX_JSON).exists() else {
            "format": FORMAT, "model_sha256": "", "encoder": "", "embed_dim": 0, "slides": {},
            "representation": representation or "tokens"}
        if representation is not None and representation != representation_of(index):
            raise InvalidInputError(f"{folder}: the index searches regions by {representation_of(index)!r}, not "
                                    f"{representation!r}; build another index for {representation!r}")
        wanted = REPRESENTATIONS[representation_of(index)]
        for path in encodings:  # every model (and the vectors searched) checked before the first write
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta_json"])) if "meta_json" in z.files else {}
                if "region_embeddings" in z.files and wanted not in z.files:
                    raise _no_tokens(str(path))
            model_id, encoder = model_of(meta)
            check_same_model(index, model_id, encoder, str(path))
            index["model_sha256"] = index["model_sha256"] or model_id
            index["encoder"] = index["encoder"] or encoder
        for path, name in zip(encodings, names):
            sha = sha256_file(path)
            old = index["slides"].get(name)
            if old and old["source_sha256"] == sha and (folder / old["shard"]).is_file():
                progress and progress(name, "unchanged")
                continue
            encoding = read_encoding_file(path)
            if encoding.region_embeddings is None:
                raise InvalidInputError(f"{path}: holds no region embeddings; encode the slide with CARE (care encode)")
            dim = encoding.region_embeddings.shape[1]
            if index["embed_dim"] and dim != index["embed_dim"]:
                raise InvalidInputError(f"{path}: embeddings are {dim}-d but the index holds {index['embed_dim']}-d; "
                                        "build another index")
            n = _write_shard(encoding, folder / f"{name}.npz", representation_of(index))
            index["embed_dim"] = dim
            index["slides"][name] = {"shard": f"{name}.npz", "source": str(path), "source_sha256": sha, "n_regions": n,
                                     "slide_path": _absolute(encoding.meta.get("slide_path") or "")}
            _save_index_json(folder, index)
            progress and progress(name, "replaced" if old else "added")
        if not (folder / INDEX_JSON).exists():
            _save_index_json(folder, index)
        _save_approximate(folder, index, progress)
    return index


def remove_slides(folder: str | os.PathLike, slides: Sequence[str],
                  progress: Callable[[str, str], None] | None = None) -> dict:
    """Remove ``slides`` (names in the index) from the region index ``folder``: ``index.json`` first (atomic), then
    their shards and the encodings the index made of them; returns the new ``index.json`` content. A name not in
    the index is refused (InvalidInputError) before anything changes."""
    from care_core._atomic import folder_lock, remove_stale_temps
    from care_core.encode import OUTPUT_SUFFIXES

    folder = Path(folder)
    index = read_index_json(folder)
    unknown = [s for s in slides if s not in index["slides"]]
    if unknown:
        held = sorted(index["slides"])
        shown = ", ".join(held[:5]) + (" …" if len(held) > 5 else "")
        raise InvalidInputError(f"{', '.join(map(repr, unknown))}: not in index {folder} (it holds {shown or 'none'})")
    with folder_lock(folder, what="care index"):
        remove_stale_temps(folder)
        index = read_index_json(folder)  # as it is now, under the lock
        gone = {s: index["slides"].pop(s) for s in dict.fromkeys(slides) if s in index["slides"]}
        _save_index_json(folder, index)
        for name, entry in gone.items():
            (folder / entry["shard"]).unlink(missing_ok=True)
            source = Path(entry["source"])
            if source.resolve().parent == (folder / "encodings").resolve():  # made by this index from a feature file
                for suffix in OUTPUT_SUFFIXES:
                    (source.parent / f"{name}{suffix}").unlink(missing_ok=True)
            progress and progress(name, "removed")
        for old in folder.glob("approx-*.faiss"):
            old.unlink()
        _save_approximate(folder, index, progress)
    return index


def _save_approximate(folder: Path, index: dict, progress) -> None:
    """Build and save the approximate (faiss) index of a large index now, so that queries load it instead of
    building it; an up-to-date one is kept."""
    from care_core.search import approx
    from care_core.search.query import RegionIndex

    total = sum(s["n_regions"] for s in index["slides"].values())
    if total < approx.APPROX_ABOVE or not approx.available():
        return
    fresh = approx.saved_path(folder, approx.index_key(index)).is_file()
    RegionIndex(folder, approximate=True)
    progress and progress("approximate index", "unchanged" if fresh else "saved")
