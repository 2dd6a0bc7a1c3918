"""Region search: an index of CARE region (and slide) embeddings for a cohort, and exact cosine queries on it.

An index is a folder: one shard per slide (``<slide>.npz``: region embeddings [R, E] float32, centroids and
bounding boxes in level-0 px, patch counts, predicted class, the slide embedding) and ``index.json`` (the CARE
model's sha256 and the patch encoder every shard came from, and per slide the sha256 of its source encoding).
A build adds or replaces one shard at a time, each written atomically and then recorded in ``index.json``
(also atomic), under the folder's lock: a build stopped anywhere leaves an index of the slides it finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError

__all__ = ["build_index", "RegionIndex", "Hit", "search_index", "write_hits", "INDEX_JSON"]

INDEX_JSON = "index.json"
FORMAT = "care-region-index/1"
_SUFFIX = "_encoding.npz"


def _slide_name(path: Path) -> str:
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


def _model_of(meta: dict) -> tuple[str, str]:
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


def region_geometry(encoding) -> dict[str, np.ndarray]:
    """Per region: ``centroid`` [R, 2] float64 mean patch centre (x, y), ``bbox`` [R, 4] int64 (x0, y0, x1, y1)
    and ``n_patches`` [R] int64, all in level-0 px from the patch coordinates."""
    n = len(encoding.region_embeddings)
    region = np.asarray(encoding.patch_region, dtype=np.int64)
    xy = np.asarray(encoding.coords, dtype=np.int64)
    side = int(encoding.patch_size_level0)
    count = np.bincount(region, minlength=n)
    centre = xy + side / 2
    centroid = np.stack([np.bincount(region, centre[:, i], minlength=n) for i in (0, 1)], 1) / np.maximum(count, 1)[:, None]
    lo = np.full((n, 2), np.iinfo(np.int64).max)
    hi = np.full((n, 2), np.iinfo(np.int64).min)
    np.minimum.at(lo, region, xy)
    np.maximum.at(hi, region, xy + side)
    bbox = np.where(count[:, None] > 0, np.concatenate([lo, hi], 1), -1)
    return {"centroid": centroid, "bbox": bbox, "n_patches": count}


def _predicted(encoding) -> np.ndarray:
    """[R] str: "<head>: <class>" of the first head with region predictions, "" without one."""
    n = len(encoding.region_embeddings)
    for pred in encoding.predictions:
        if pred.region_class is not None and len(pred.region_class) == n:
            return np.array([f"{pred.head}: {pred.classes[c]}" for c in pred.region_class], dtype=str)
    return np.full(n, "", dtype=str)


def _write_shard(encoding, path: Path) -> int:
    from care_core._atomic import atomic_path

    geometry = region_geometry(encoding)
    arrays = dict(region_embeddings=np.asarray(encoding.region_embeddings, dtype=np.float32),
                  slide_embedding=np.asarray(encoding.slide_embedding, dtype=np.float32),
                  predicted=_predicted(encoding), **geometry)
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


def _encode_features(features: list[Path], model, out: Path) -> list[Path]:
    """Encode feature files into ``out``/encodings (slides already encoded with this model are skipped)."""
    from care_core.encode import iter_encode_paths

    folder = out / "encodings"
    list(iter_encode_paths(features, model, folder, resume=True))
    return [folder / f"{p.stem}{_SUFFIX}" for p in features if (folder / f"{p.stem}{_SUFFIX}").is_file()]


def build_index(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, model=None,
                progress: Callable[[str, str], None] | None = None) -> dict:
    """Add the slides of ``inputs`` (``<slide>_encoding.npz`` files, feature .h5 files, or folders of them) to the
    region index ``out`` (created when new); returns its ``index.json`` content.

    Feature files are first encoded with ``model`` (a checkpoint path or CARE; None: the demo checkpoint) into
    ``out``/encodings. A slide whose source encoding is unchanged (same sha256) is skipped, a changed one
    replaces its shard, the others are untouched. Every encoding must come from the index's CARE model and
    patch encoder (InvalidInputError otherwise, before anything is written). progress(slide, "added" |
    "replaced" | "unchanged") after each slide.
    """
    from care_core._atomic import check_output_dir, folder_lock, remove_stale_temps
    from care_core.features.timm_encoders import sha256_file
    from care_core.regions.bundle import read_encoding_file

    encodings, features = _inputs(inputs)
    folder = check_output_dir(out)
    with folder_lock(folder, what="care index"):
        remove_stale_temps(folder)
        if features:
            encodings += _encode_features(features, model, folder)
        names = [_slide_name(p) for p in encodings]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise InvalidInputError(f"several encodings are named {clash}; a slide name must be unique in an index")
        index = read_index_json(folder) if (folder / INDEX_JSON).exists() else {
            "format": FORMAT, "model_sha256": "", "encoder": "", "embed_dim": 0, "slides": {}}
        for path in encodings:  # every model checked before the first write
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta_json"])) if "meta_json" in z.files else {}
            model_id, encoder = _model_of(meta)
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
            n = _write_shard(encoding, folder / f"{name}.npz")
            index["embed_dim"] = dim
            index["slides"][name] = {"shard": f"{name}.npz", "source": str(path), "source_sha256": sha, "n_regions": n}
            _save_index_json(folder, index)
            progress and progress(name, "replaced" if old else "added")
        if not (folder / INDEX_JSON).exists():
            _save_index_json(folder, index)
    return index


@dataclass(frozen=True)
class Hit:
    """One answer: ``region`` -1 for a slide; similarity: cosine in [-1, 1] (distance = 1 - similarity);
    centroid (x, y) and bbox (x0, y0, x1, y1) in level-0 px (None for a slide)."""

    rank: int
    slide: str
    region: int
    similarity: float
    centroid: tuple[float, float] | None = None
    bbox: tuple[int, int, int, int] | None = None
    n_patches: int | None = None
    predicted: str = ""

    @property
    def distance(self) -> float:
        return 1.0 - self.similarity


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def top_k(matrix: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, similarities) of the ``k`` largest ``matrix @ query`` over the ``allowed`` rows (bool mask), best
    first, ties by row; exact (a matmul and an argpartition)."""
    sims = matrix @ query
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    k = min(k, int(len(sims) if allowed is None else allowed.sum()))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = np.argpartition(-sims, k - 1)[:k]
    rows = rows[np.lexsort((rows, -sims[rows]))]
    return rows.astype(np.int64), sims[rows]


class RegionIndex:
    """A region index loaded for queries: every shard's normalised region embeddings in one [N, E] float32 matrix
    (``regions``), the slide embeddings in ``slides_matrix`` [S, E], and per row its slide and region."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.info = read_index_json(self.folder)
        names = sorted(self.info["slides"])
        parts: dict[str, list] = {k: [] for k in ("region_embeddings", "centroid", "bbox", "n_patches", "predicted")}
        slide_rows, slide_emb = [], []
        for i, name in enumerate(names):
            path = self.folder / self.info["slides"][name]["shard"]
            try:
                with np.load(path, allow_pickle=False) as z:
                    for k in parts:
                        parts[k].append(z[k])
                    slide_emb.append(z["slide_embedding"])
            except (OSError, ValueError, KeyError) as err:
                raise InvalidInputError(f"{path}: shard of slide {name!r} is unreadable ({type(err).__name__}); "
                                        "run care index on its encoding again") from None
            slide_rows.append(np.full(len(parts["n_patches"][-1]), i, np.int64))
        dim = self.info.get("embed_dim") or 0
        self.slide_names = names
        self.regions = _normalised(np.concatenate(parts.pop("region_embeddings")) if names else np.zeros((0, dim)))
        self.slides_matrix = _normalised(np.stack(slide_emb) if names else np.zeros((0, dim)))
        self.slide_of = np.concatenate(slide_rows) if names else np.zeros(0, np.int64)
        self.region_of = np.concatenate([np.arange(len(r)) for r in slide_rows]) if names else np.zeros(0, np.int64)
        self.meta = {k: np.concatenate(v) if names else np.zeros(0) for k, v in parts.items()}

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the matrices and the per-region metadata."""
        return sum(a.nbytes for a in (self.regions, self.slides_matrix, self.slide_of, self.region_of,
                                      *self.meta.values()))

    def _slide_id(self, slide: str) -> int:
        if slide not in self.info["slides"]:
            shown = ", ".join(self.slide_names[:5]) + (" …" if len(self.slide_names) > 5 else "")
            raise InvalidInputError(f"slide {slide!r} is not in index {self.folder} (it holds {shown or 'none'}); "
                                    "add it with care index")
        return self.slide_names.index(slide)

    def query_embedding(self, slide: str, region: int | None = None) -> np.ndarray:
        """The stored embedding [E] of ``slide``'s region ``region`` (its slide embedding when None)."""
        s = self._slide_id(slide)
        if region is None:
            return self.slides_matrix[s]
        n = int((self.slide_of == s).sum())
        if not 0 <= region < n:
            raise InvalidInputError(f"region {region} is not one of slide {slide!r}'s {n} regions (0..{n - 1})")
        return self.regions[np.flatnonzero(self.slide_of == s)[region]]

    def check_query(self, embedding: np.ndarray, *, model: str = "", encoder: str = "", what: str = "the query") -> np.ndarray:
        """``embedding`` as a normalised [E] vector after the model and width checks (InvalidInputError)."""
        check_same_model(self.info, model, encoder, what)
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.regions.shape[1] or not np.isfinite(q).all():
            raise InvalidInputError(f"{what} is a {q.shape[0]}-d vector{'' if np.isfinite(q).all() else ' with non-finite values'}"
                                    f" but the index holds {self.regions.shape[1]}-d embeddings; give a finite embedding of "
                                    "the index's CARE model")
        return _normalised(q)

    def search(self, query: np.ndarray, *, k: int = 20, slides: bool = False, slide: str | None = None,
               region: int | None = None, same_slide: bool | None = None) -> list[Hit]:
        """The ``k`` most similar regions (``slides``: slides) to ``query`` (a normalised [E] vector, e.g. from
        ``query_embedding`` or ``check_query``), best first. ``slide``/``region`` name the query's own slide and
        region: that item itself is left out, and same_slide True keeps only that slide's regions, False only
        the other slides' (None: all)."""
        if slides:
            allowed = np.array([n != slide for n in self.slide_names], bool)
            rows, sims = top_k(self.slides_matrix, query, k, allowed)
            return [Hit(i + 1, self.slide_names[r], -1, float(s)) for i, (r, s) in enumerate(zip(rows, sims))]
        allowed = None
        if slide is not None:
            s = self.slide_names.index(slide) if slide in self.info["slides"] else -1
            allowed = np.ones(len(self), bool)
            if same_slide is not None:
                allowed &= (self.slide_of == s) == same_slide
            if region is not None:
                allowed &= ~((self.slide_of == s) & (self.region_of == region))
        elif same_slide:
            raise InvalidInputError("--same-slide needs the query's slide (--slide)")
        rows, sims = top_k(self.regions, query, k, allowed)
        return [Hit(i + 1, self.slide_names[self.slide_of[r]], int(self.region_of[r]), float(s),
                    tuple(float(v) for v in self.meta["centroid"][r]), tuple(int(v) for v in self.meta["bbox"][r]),
                    int(self.meta["n_patches"][r]), str(self.meta["predicted"][r]))
                for i, (r, s) in enumerate(zip(rows, sims))]


def write_hits(hits: Sequence[Hit], path: str | os.PathLike) -> Path:
    """Write ``hits`` as CSV or JSON (by the file ending), atomically."""
    import csv

    from care_core._atomic import atomic_path

    path = Path(path)
    rows = [{"rank": h.rank, "slide": h.slide, "region": h.region, "similarity": round(h.similarity, 6),
             "distance": round(h.distance, 6), "centroid_x": None if h.centroid is None else round(h.centroid[0], 1),
             "centroid_y": None if h.centroid is None else round(h.centroid[1], 1),
             "bbox": None if h.bbox is None else list(h.bbox), "n_patches": h.n_patches, "predicted": h.predicted}
            for h in hits]
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InvalidInputError(f"{path.name}: unknown result kind; end the name in .csv or .json")
    with atomic_path(path) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps(rows, indent=1))
        else:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["rank"])
                writer.writeheader()
                for row in rows:
                    writer.writerow({**row, "bbox": "" if row["bbox"] is None else " ".join(map(str, row["bbox"]))})
    return path


def search_index(index: str | os.PathLike | RegionIndex, *, slide: str | os.PathLike | None = None,
                 region: int | None = None, embedding: str | os.PathLike | None = None, k: int = 20,
                 same_slide: bool | None = None) -> list[Hit]:
    """What ``care search`` asks: the ``k`` regions most like ``slide``'s region ``region`` (without ``region``:
    the slides most like ``slide``), or like the vector in ``embedding`` (a .npy of shape [E]).

    slide: a slide name in the index, or a ``<slide>_encoding.npz`` (then its model and encoder must be the
    index's). same_slide: True only the query slide's regions, False only other slides' (None: all).
    """
    from care_core.regions.bundle import read_encoding_file

    index = index if isinstance(index, RegionIndex) else RegionIndex(index)
    if (slide is None) == (embedding is None):
        raise InvalidInputError("give the query as a slide (and region) or as an embedding file, one of them")
    if k < 1:
        raise InvalidInputError(f"k={k}: ask for at least one answer")
    if embedding is not None:
        try:
            vector = np.load(embedding, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InvalidInputError(f"{embedding}: not a .npy embedding ({type(err).__name__}); give a [E] .npy file "
                                    "such as <slide>_slide.npy") from None
        return index.search(index.check_query(vector, what=str(embedding)), k=k)
    path = Path(slide)
    if path.name.endswith(".npz") and path.is_file():
        encoding = read_encoding_file(path)
        model, encoder = _model_of(encoding.meta)
        name = _slide_name(path)
        if region is None:
            vector = encoding.slide_embedding
        elif encoding.region_embeddings is None or not 0 <= region < len(encoding.region_embeddings):
            n = 0 if encoding.region_embeddings is None else len(encoding.region_embeddings)
            raise InvalidInputError(f"region {region} is not one of {path.name}'s {n} regions (0..{n - 1})")
        else:
            vector = encoding.region_embeddings[region]
        query = index.check_query(vector, model=model, encoder=encoder, what=str(path))
    else:
        name = str(slide)
        query = index.query_embedding(name, region)
    return index.search(query, k=k, slides=region is None, slide=name, region=region, same_slide=same_slide)
