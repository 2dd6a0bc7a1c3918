"""An approximate region index for large indexes: faiss IVF-Flat (inner product of normalised embeddings, so
cosine) over the exact matrix. faiss-cpu is optional (``pip install napari-care[search]``); without it every
search is exact."""

from __future__ import annotations

import numpy as np

__all__ = ["APPROX_ABOVE", "available", "ApproxIndex"]

APPROX_ABOVE = 200_000  # regions; below it (or without faiss) search is exact


def available() -> bool:
    """True when faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class ApproxIndex:
    """IVF-Flat over ``matrix`` [N, E] (rows L2-normalised): ``nlist`` k-means lists (default 2·sqrt(N)) trained on
    at most 40 rows per list, ``nprobe`` lists scanned per query (default 32; nprobe = nlist is exact)."""

    def __init__(self, matrix: np.ndarray, *, nlist: int | None = None, nprobe: int = 32, seed: int = 0) -> None:
        import faiss

        n, dim = matrix.shape
        self.nlist = nlist or max(1, int(2 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        self.ivf = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = matrix[np.sort(rng.choice(n, min(n, 40 * self.nlist), replace=False))]
        self.ivf.train(np.ascontiguousarray(sample))
        self.ivf.add(np.ascontiguousarray(matrix))
        self.ivf.nprobe = min(nprobe, self.nlist)
        self._quantizer = quantizer  # the IVF index refers to it; keep it alive

    @property
    def nbytes(self) -> int:
        """Bytes of the lists (vectors and ids) and the centroids."""
        return self.ivf.ntotal * (self.ivf.d * 4 + 8) + self.nlist * self.ivf.d * 4

    def top_k(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, similarities) of about the ``k`` best ``allowed`` rows, best first; None when the candidates
        hold fewer than ``k`` allowed rows (then ask the exact search)."""
        fetch = k if allowed is None else 4 * k + 16
        sims, rows = self.ivf.search(np.ascontiguousarray(query[None], dtype=np.float32), fetch)
        sims, rows = sims[0], rows[0]
        keep = rows >= 0
        if allowed is not None:
            keep &= allowed[np.maximum(rows, 0)]
        if keep.sum() < min(k, len(allowed) if allowed is not None else self.ivf.ntotal):
            return None
        rows, sims = rows[keep][:k], sims[keep][:k]
        order = np.lexsort((rows, -sims))
        return rows[order].astype(np.int64), sims[order]
