"""Exact cosine queries on a region index: by a slide's region, by a slide, or by an embedding."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core.errors import CareError, InvalidInputError
from care_core.search.index import (
    check_same_model,
    model_of,
    read_index_json,
    region_vectors,
    representation_of,
    slide_name,
)

__all__ = ["RegionIndex", "Hit", "top_k", "search_index", "search_encoding", "write_hits"]


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


def _region_hit(rank: int, slide: str, region: int, similarity: float, meta: dict, row: int) -> Hit:
    """A region's Hit, its geometry and predicted class from row ``row`` of ``meta`` (region_extents' arrays and
    ``predicted``)."""
    return Hit(rank, slide, int(region), float(similarity), tuple(float(v) for v in meta["centroid"][row]),
               tuple(int(v) for v in meta["bbox"][row]), int(meta["n_patches"][row]), str(meta["predicted"][row]))


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
    """A region index loaded for queries: the slide embeddings in ``slides_matrix`` [S, E], per region row its
    slide and region (``slide_of``, ``region_of``) and metadata, and the region embeddings, normalised: in one
    [N, E] float32 matrix ``regions`` (exact search), or, with ``approximate``, only inside the faiss index
    (``regions`` is None; saved beside the shards and loaded again while they are unchanged).

    approximate: None: when the index holds at least ``APPROX_ABOVE`` regions and faiss is installed.
    """

    def __init__(self, folder: str | os.PathLike, *, approximate: bool | None = None) -> None:
        from care_core.search import approx

        self.folder = Path(folder)
        self.info = read_index_json(self.folder)
        names = sorted(self.info["slides"])
        total = sum(int(self.info["slides"][n]["n_regions"]) for n in names)
        if approximate is None:
            approximate = total >= approx.APPROX_ABOVE and approx.available()
        key = approx.index_key(self.info)
        self._approx = approx.load_saved(self.folder, key, total) if approximate else None
        keys = ("centroid", "bbox", "n_patches", "predicted") + (() if self._approx else ("region_embeddings",))
        parts: dict[str, list] = {k: [] for k in keys}
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
        self.dim = int(self.info.get("embed_dim") or 0)
        self.representation = representation_of(self.info)  # what the region vectors are (REPRESENTATIONS)
        self.slide_names = names
        matrix = parts.pop("region_embeddings", None)
        matrix = None if matrix is None else _normalised(np.concatenate(matrix) if names else np.zeros((0, self.dim)))
        if approximate and self._approx is None and total:
            self._approx = approx.ApproxIndex(matrix)
            try:
                self._approx.save(self.folder, key)
            except (OSError, CareError):  # a read-only or full folder: built again at the next load
                pass
        self.regions = None if self._approx is not None else matrix
        self.slides_matrix = _normalised(np.stack(slide_emb) if names else np.zeros((0, self.dim)))
        self.slide_of = np.concatenate(slide_rows) if names else np.zeros(0, np.int64)
        self.region_of = np.concatenate([np.arange(len(r)) for r in slide_rows]) if names else np.zeros(0, np.int64)
        self.meta = {k: np.concatenate(v) if names else np.zeros(0) for k, v in parts.items()}

    def __len__(self) -> int:
        return len(self.slide_of)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the embeddings (matrix or faiss index) and the per-region metadata."""
        held = self.regions.nbytes if self.regions is not None else self._approx.nbytes if self._approx else 0
        return held + sum(a.nbytes for a in (self.slides_matrix, self.slide_of, self.region_of, *self.meta.values()))

    def vector(self, row: int) -> np.ndarray:
        """The normalised embedding [E] of region row ``row``."""
        return self.regions[row] if self.regions is not None else self._approx.vector(row)

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
        return self.vector(np.flatnonzero(self.slide_of == s)[region])

    def check_query(self, embedding: np.ndarray, *, model: str = "", encoder: str = "", what: str = "the query") -> np.ndarray:
        """``embedding`` as a normalised [E] vector after the model and width checks (InvalidInputError)."""
        check_same_model(self.info, model, encoder, what)
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim or not np.isfinite(q).all():
            raise InvalidInputError(f"{what} is a {q.shape[0]}-d vector{'' if np.isfinite(q).all() else ' with non-finite values'}"
                                    f" but the index holds {self.dim}-d embeddings; give a finite embedding of "
                                    "the index's CARE model")
        return _normalised(q)

    def slide_path(self, slide: str) -> Path | None:
        """The slide file ``slide``'s encoding was made from, when it exists here (a relative path is tried
        from the working folder, then beside its source encoding); None otherwise."""
        entry = self.info["slides"].get(slide, {})
        recorded = entry.get("slide_path") or ""
        if not recorded:
            return None
        path = Path(recorded)
        candidates = [path] if path.is_absolute() else [path, Path(entry.get("source", "")).parent / path]
        return next((c for c in candidates if c.is_file()), None)

    def region_patches(self, slide: str, region: int) -> tuple[np.ndarray, int] | None:
        """(top-left (x, y) [n, 2] of ``slide``'s region ``region``'s patches, patch side), level-0 px; None for a
        shard written before shards kept their patches."""
        path = self.folder / self.info["slides"][slide]["shard"]
        with np.load(path, allow_pickle=False) as z:
            if "patch_xy" not in z.files:
                return None
            return z["patch_xy"][z["patch_region"] == region], int(z["patch_size_level0"])

    def approximate(self, **kw):
        """The approximate index: the one loaded, or built from the exact matrix at the first call (again with
        ``ApproxIndex`` keywords ``kw``) and kept."""
        from care_core.search.approx import ApproxIndex

        if self._approx is None or (kw and self.regions is not None):
            self._approx = ApproxIndex(self.regions, **kw)
        return self._approx

    def search(self, query: np.ndarray, *, k: int = 20, slides: bool = False, slide: str | None = None,
               region: int | None = None, same_slide: bool | None = None, approximate: bool | None = None) -> list[Hit]:
        """The ``k`` most similar regions (``slides``: slides) to ``query`` (a normalised [E] vector, e.g. from
        ``query_embedding`` or ``check_query``), best first. ``slide``/``region`` name the query's own slide and
        region: that item itself is left out, and same_slide True keeps only that slide's regions, False only
        the other slides' (None: all). approximate: through the faiss index (None: when it was loaded with
        one); exact scans every list of an index without the exact matrix."""
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
        if approximate is None:
            approximate = self._approx is not None
        if approximate or self.regions is None:
            rows, sims = self.approximate().top_k(query, k, allowed, exact=not approximate)
        else:
            rows, sims = top_k(self.regions, query, k, allowed)
        return [_region_hit(i + 1, self.slide_names[self.slide_of[r]], self.region_of[r], s, self.meta, r)
                for i, (r, s) in enumerate(zip(rows, sims))]


def search_encoding(encoding, region: int, *, k: int = 20, slide: str = "") -> list[Hit]:
    """The ``k`` regions of one slide's ``encoding`` most like its region ``region`` (itself left out), best
    first: a search of the open slide alone, no index needed; by the regions' mean tokens (g^AR in an encoding
    made before they were kept). slide: the name the hits carry."""
    from care_core.regions.geometry import region_extents
    from care_core.search.index import predicted_classes

    n = len(encoding.region_embeddings)
    if not 0 <= region < n:
        raise InvalidInputError(f"region {region} is not one of the slide's {n} regions (0..{n - 1})")
    vectors = encoding.region_token_means
    matrix = _normalised(encoding.region_embeddings if vectors is None else vectors)
    allowed = np.arange(n) != region
    rows, sims = top_k(matrix, matrix[region], k, allowed)
    meta = {**region_extents(encoding), "predicted": predicted_classes(encoding)}
    return [_region_hit(i + 1, slide, r, s, meta, r) for i, (r, s) in enumerate(zip(rows, sims))]


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
        model, encoder = model_of(encoding.meta)
        name = slide_name(path)
        if region is None:
            vector = encoding.slide_embedding
        elif encoding.region_embeddings is None or not 0 <= region < len(encoding.region_embeddings):
            n = 0 if encoding.region_embeddings is None else len(encoding.region_embeddings)
            raise InvalidInputError(f"region {region} is not one of {path.name}'s {n} regions (0..{n - 1})")
        else:
            vector = region_vectors(encoding, index.representation, str(path))[region]
        query = index.check_query(vector, model=model, encoder=encoder, what=str(path))
    else:
        name = str(slide)
        query = index.query_embedding(name, region)
    return index.search(query, k=k, slides=region is None, slide=name, region=region, same_slide=same_slide)
