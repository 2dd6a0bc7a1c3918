"""An approximate region index for large indexes: faiss IVF-Flat (inner product of normalised embeddings, so
cosine). It holds the only copy of the region embeddings (a row is read back with ``vector``), so an index in
memory is about the embeddings' own size. It is saved beside the shards as ``approx-<key>.faiss``, the key
naming the slides it was built from, and loaded again while those are unchanged. faiss-cpu is optional
(``pip install napari-care[search]``); without it every search is exact."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["APPROX_ABOVE", "available", "ApproxIndex", "index_key", "load_saved", "saved_path"]

APPROX_ABOVE = 200_000  # regions; below it (or without faiss) search is exact


def available() -> bool:
    """True when faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def index_key(info: dict) -> str:
    """sha256 naming an index's content: its model, encoder and every slide's source encoding."""
    slides = sorted((name, s["source_sha256"], s["n_regions"]) for name, s in info["slides"].items())
    text = json.dumps([info.get("model_sha256", ""), info.get("encoder", ""), slides])
    return hashlib.sha256(text.encode()).hexdigest()


class ApproxIndex:
    """IVF-Flat over ``matrix`` [N, E] (rows L2-normalised): ``nlist`` k-means lists (default 2·sqrt(N)) trained on
    at most 40 rows per list, ``nprobe`` lists scanned per query (default 32; nprobe = nlist is exact)."""

    def __init__(self, matrix: np.ndarray | None, *, nlist: int | None = None, nprobe: int = 32, seed: int = 0,
                 ivf=None) -> None:
        import faiss

        if ivf is None:
            n, dim = matrix.shape
            nlist = nlist or max(1, int(2 * np.sqrt(n)))
            self._quantizer = faiss.IndexFlatIP(dim)  # the IVF index refers to it; keep it alive
            ivf = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            ivf.train(np.ascontiguousarray(matrix[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))]))
            ivf.add(np.ascontiguousarray(matrix))
            ivf.make_direct_map()  # row -> its place in the lists, for `vector`
        self.ivf = ivf
        self.nlist = int(ivf.nlist)
        self.ivf.nprobe = min(nprobe, self.nlist)

    def __len__(self) -> int:
        return int(self.ivf.ntotal)

    @property
    def nbytes(self) -> int:
        """Bytes of the lists (vectors and ids), the row map and the centroids."""
        return self.ivf.ntotal * (self.ivf.d * 4 + 8 + 8) + self.nlist * self.ivf.d * 4

    def vector(self, row: int) -> np.ndarray:
        """The stored (normalised) embedding [E] of ``row``."""
        return self.ivf.reconstruct(int(row))

    def top_k(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
              exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows, similarities) of about the ``k`` best ``allowed`` rows (bool mask), best first, ties by row. The
        mask filters inside the scan; when the lists scanned hold fewer than ``k`` allowed rows, or ``exact``,
        every list is scanned (the exact answer)."""
        import faiss

        want = min(k, len(self) if allowed is None else int(allowed.sum()))
        if want <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        bits = None if allowed is None else np.packbits(allowed.astype(np.uint8), bitorder="little")
        for nprobe in ((self.nlist,) if exact else (self.ivf.nprobe, self.nlist)):
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if bits is not None:
                selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
                params.sel = selector
            sims, rows = self.ivf.search(q, want, params=params)
            keep = rows[0] >= 0
            if keep.sum() >= want:
                break
        rows, sims = rows[0][keep], sims[0][keep]
        order = np.lexsort((rows, -sims))
        return rows[order].astype(np.int64), sims[order]

    def save(self, folder: Path, key: str) -> None:
        """Write the index into ``folder`` as ``saved_path(folder, key)`` (atomically) and remove older ones."""
        import faiss

        from care_core._atomic import atomic_path

        path = saved_path(folder, key)
        with atomic_path(path) as tmp:
            faiss.write_index(self.ivf, str(tmp))
        for old in folder.glob("approx-*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)


def saved_path(folder: Path, key: str) -> Path:
    """Where the approximate index of the content ``key`` names is saved."""
    return Path(folder) / f"approx-{key[:32]}.faiss"


def load_saved(folder: Path, key: str, rows: int, nprobe: int = 32) -> ApproxIndex | None:
    """The index saved in ``folder`` for the content ``key`` names, holding ``rows`` rows; None when there is
    none (or it cannot be read)."""
    import faiss

    path = saved_path(folder, key)
    if not path.is_file():
        return None
    try:
        ivf = faiss.read_index(os.fspath(path))
    except RuntimeError:
        return None
    return ApproxIndex(None, nprobe=nprobe, ivf=ivf) if ivf.ntotal == rows else None
