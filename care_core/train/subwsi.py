"""Sub-WSIs for Stage I: the cut of each slide's patch grid into pieces of at most `max_patches` patches,
computed once and stored as one index file so a cohort is never re-clustered.

A slide's grid is clustered with DBSCAN (scikit-learn, grid units); a cluster over `max_patches` is
bisected along its longer axis at the median until every piece fits; pieces under `min_patches` are
dropped. The index (`.h5`) holds a slides table (path relative to the index, size, mtime, grid origin and
step) and, per sub-WSI, its slide, its grid extent and its sorted patch rows (flat int32 + offsets). The
patch rows stay on disk: a loaded index holds 20 bytes per sub-WSI, nothing per patch.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path, check_free_space
from care_core.errors import FeatureMismatchError, TrainingConfigError

__all__ = ["SubWSIParams", "SubWSIIndex", "build_subwsi_index", "split_subwsis", "INDEX_FORMAT"]

INDEX_FORMAT = "napari-care-subwsi-index/1"  # root attribute `format` of the index files we write


@dataclass(frozen=True)
class SubWSIParams:
    """How slides are cut (grid units)."""

    max_patches: int = 360  # a sub-WSI holds at most this many patches (paper: 360)
    min_patches: int = 16  # pieces with fewer patches are dropped
    eps: float = 1.5  # DBSCAN neighbourhood radius in grid cells (1.5: the 8 neighbours)
    min_samples: int = 1  # DBSCAN core-point count (1: no patch is noise)

    def __post_init__(self) -> None:
        if not 1 <= self.min_patches <= self.max_patches:
            raise TrainingConfigError(
                f"sub-WSI sizes min_patches={self.min_patches}, max_patches={self.max_patches}: need "
                "1 <= min_patches <= max_patches"
            )
        if not self.eps > 0 or self.min_samples < 1:
            raise TrainingConfigError(
                f"DBSCAN eps={self.eps}, min_samples={self.min_samples}: need eps > 0 and min_samples >= 1"
            )


def split_subwsis(grid: np.ndarray, params: SubWSIParams) -> list[np.ndarray]:
    """Cut one slide's grid [N, 2] (col, row) into sub-WSIs: a list of sorted int64 row indices.

    DBSCAN clusters (noise dropped), each bisected along its longer axis at the median (by rank, so the
    halves differ by at most one patch) until it has <= max_patches patches; pieces < min_patches dropped.
    """
    from sklearn.cluster import DBSCAN

    grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    if not len(grid):
        return []
    labels = DBSCAN(eps=params.eps, min_samples=params.min_samples).fit_predict(grid)
    pieces, stack = [], [np.flatnonzero(labels == lab) for lab in range(labels.max() + 1)][::-1]
    while stack:
        rows = stack.pop()
        if len(rows) > params.max_patches:
            g = grid[rows]
            axis = int(np.ptp(g[:, 1]) > np.ptp(g[:, 0]))  # 0: cols (x) are the longer side
            order = rows[np.lexsort((g[:, 1 - axis], g[:, axis]))]
            half = len(rows) // 2
            stack.extend([np.sort(order[half:]), np.sort(order[:half])])  # low half is popped first
        elif len(rows) >= params.min_patches:
            pieces.append(rows)
    return pieces


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _read_grid(path: Path) -> tuple[np.ndarray, np.ndarray, int, int, str]:
    """Grid (col, row), origin (level-0 x, y of grid cell 0), step, feature dim and encoder of one `.h5`
    feature file, read (and checked) by `load_features`."""
    from care_core.features import load_features

    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise TrainingConfigError(
            f"{path}: Stage I reads patch rows from .h5 feature files only; convert it with "
            "care_core.features.load_features(...).save('<name>.h5')"
        )
    pf = load_features(path)
    origin = pf.coords.min(axis=0) if pf.n_patches else np.zeros(2, np.int64)
    return pf.grid_indices(), origin, pf.patch_size_level0, pf.dim, pf.encoder


def _norm(encoder: str) -> str:
    return encoder.strip().lower().replace("-", "_")


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows): keep it absolute
        return str(path)


class SubWSIIndex:
    """A stored sub-WSI cut of a cohort (read with `load`). Sub-WSI i belongs to slide `slide_of(i)`;
    `patches(i)` are its sorted row numbers in that slide's feature file."""

    def __init__(self, path: Path, attrs: dict, slides: dict, subwsi_slide: np.ndarray,
                 offsets: np.ndarray, extent: np.ndarray) -> None:
        self.path = Path(path)
        self.encoder: str = attrs["encoder"]
        self.dim: int = int(attrs["dim"])
        self.params = SubWSIParams(**json.loads(attrs["params_json"]))
        self.slide_paths: list[Path] = [(self.path.parent / p).resolve() for p in slides["path"]]
        self.slide_size = slides["size"]  # [S] int64 bytes, as when indexed
        self.slide_mtime_ns = slides["mtime_ns"]  # [S] int64
        self.slide_origin = slides["origin"]  # [S, 2] int64 level-0 (x, y) of grid cell (0, 0)
        self.slide_step = slides["step"]  # [S] int64 level-0 px per grid cell
        self.subwsi_slide = subwsi_slide  # [M] int32
        self.offsets = offsets  # [M + 1] int64 into the stored patch rows
        self.extent = extent  # [M, 2] int32 bounding-box (width, height) in grid cells
        self._h5, self._pid = None, None

    # -- reading --------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, check_files: bool = True) -> SubWSIIndex:
        """Open an index written by `build_subwsi_index`. check_files: refuse it (TrainingConfigError) when a
        feature file is missing or its size/mtime changed since indexing."""
        import h5py

        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                if attrs.get("format") != INDEX_FORMAT:
                    raise TrainingConfigError(
                        f"{path}: not a sub-WSI index (format {attrs.get('format')!r}); build one with "
                        "build_subwsi_index"
                    )
                s = f["slides"]
                slides = {k: s[k][()] for k in ("size", "mtime_ns", "origin", "step")}
                slides["path"] = [p.decode() for p in s["path"][()]]
                sub = f["subwsi"]
                index = cls(path, attrs, slides, sub["slide"][()], sub["offsets"][()], sub["extent"][()])
        except (OSError, KeyError) as exc:
            raise TrainingConfigError(f"{path}: unreadable sub-WSI index ({exc}); rebuild it with build_subwsi_index") from exc
        if check_files:
            for s in range(index.n_slides):
                index.check_slide(s)
        return index

    def check_slide(self, s: int) -> None:
        """Raise TrainingConfigError when slide s's feature file is gone or changed since indexing."""
        p = self.slide_paths[s]
        if not p.is_file():
            raise TrainingConfigError(f"{p}: feature file of sub-WSI index {self.path} is missing; restore it or rebuild the index")
        if _stat(p) != (int(self.slide_size[s]), int(self.slide_mtime_ns[s])):
            raise TrainingConfigError(
                f"{p} changed on disk (size/mtime) since sub-WSI index {self.path} was built; rebuild the index"
            )

    def __len__(self) -> int:
        return len(self.subwsi_slide)

    @property
    def n_slides(self) -> int:
        return len(self.slide_paths)

    @property
    def sizes(self) -> np.ndarray:
        """[M] int64 patches per sub-WSI."""
        return np.diff(self.offsets)

    def slide_of(self, i: int) -> int:
        """Slide number (into `slide_paths`) of sub-WSI i."""
        return int(self.subwsi_slide[i])

    def patches(self, i: int) -> np.ndarray:
        """Sorted int64 row numbers of sub-WSI i in its slide's feature file (read from the index file)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sub-WSI {i} out of range (index has {len(self)})")
        i = int(i) % len(self)
        return self._file()["subwsi/patches"][self.offsets[i]:self.offsets[i + 1]].astype(np.int64)

    def _file(self):
        import h5py

        if self._pid != os.getpid():  # opened lazily, and again in each forked/spawned worker
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}

    def __repr__(self) -> str:
        return f"SubWSIIndex({str(self.path)!r}, {len(self)} sub-WSIs of {self.n_slides} slides, {self.encoder!r} {self.dim}-d)"


# -- building -----------------------------------------------------------------------------------------
def _moved(old: SubWSIIndex, files: list[Path]) -> bool:
    """``files`` are the old index's feature files moved elsewhere: same names, in order, of the same sizes."""
    return ([p.name for p in old.slide_paths] == [p.name for p in files]
            and all(p.is_file() and p.stat().st_size == int(n) for p, n in zip(files, old.slide_size)))


def build_subwsi_index(
    feature_files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    max_patches: int = 360,
    min_patches: int = 16,
    eps: float = 1.5,
    min_samples: int = 1,
    overwrite: bool = False,
) -> SubWSIIndex:
    """Cut every slide of `feature_files` (.h5) into sub-WSIs and write the index `out` (.h5) once, atomically.

    When `out` exists and overwrite is False, it is reused if it was built from the same files with the same
    parameters (TrainingConfigError otherwise); overwrite=True rebuilds it. All files must share encoder
    and feature dim (FeatureMismatchError naming both files).
    """
    params = SubWSIParams(max_patches, min_patches, eps, min_samples)
    files = [Path(p).resolve() for p in feature_files]
    out = Path(out).resolve()
    if not files:
        raise TrainingConfigError(f"{out}: no feature files to index; pass at least one .h5 feature file")
    dup = next((p for p, n in Counter(files).items() if n > 1), None)
    if dup is not None:
        raise TrainingConfigError(f"{dup} is listed twice for sub-WSI index {out}; list each feature file once")
    if out.exists() and not overwrite:
        old = SubWSIIndex.load(out, check_files=False)
        if old.slide_paths == files and old.params == params:
            return SubWSIIndex.load(out)  # the same files: refused if one changed since
        if not _moved(old, files) or old.params != params:
            raise TrainingConfigError(
                f"{out} exists and was built from other feature files or parameters; pass overwrite=True to "
                "rebuild it or choose another index path"
            )
        # the same files at a new place (a run continued on another machine): cut again, to the same sub-WSIs

    first, slides, subwsi, rows = None, [], [], []  # per slide: table row; per sub-WSI: (slide, extent)
    for s, path in enumerate(files):
        stat = _stat(path) if path.is_file() else None  # before reading: a later rewrite is caught
        grid, origin, step, dim, encoder = _read_grid(path)
        if first is None:
            first = (path, dim, encoder)
        elif dim != first[1] or _norm(encoder) != _norm(first[2]):
            raise FeatureMismatchError(
                f"{path} ({encoder or 'unknown encoder'!r}, {dim}-d) and {first[0]} ({first[2] or 'unknown encoder'!r}, "
                f"{first[1]}-d) differ; one sub-WSI index takes features of one encoder and dim only"
            )
        for piece in split_subwsis(grid, params):
            rows.append(piece.astype(np.int32))
            subwsi.append((s, *(np.ptp(grid[piece], axis=0) + 1)))
        slides.append((_rel(path, out.parent), *stat, *origin, step))
    if not subwsi:
        raise TrainingConfigError(
            f"{out}: no sub-WSI of >= {min_patches} patches in {len(files)} feature file(s); lower min_patches"
        )
    _write_index(out, first[2], first[1], params, slides, np.asarray(subwsi, np.int64), rows)
    return SubWSIIndex.load(out)


def _write_index(out: Path, encoder: str, dim: int, params: SubWSIParams, slides: list[tuple],
                 subwsi: np.ndarray, rows: list[np.ndarray]) -> None:
    """Build the index file in memory, then write it in one go (a full disk is one OutputError, never a
    half-written HDF5 file)."""
    import h5py

    paths, size, mtime_ns, x0, y0, step = zip(*slides)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs.update(format=INDEX_FORMAT, encoder=encoder, dim=dim, params_json=json.dumps(asdict(params)))
        t = f.create_group("slides")
        t["path"] = np.array([p.encode() for p in paths], dtype=h5py.string_dtype("utf-8"))
        t["size"], t["mtime_ns"], t["step"] = (np.asarray(v, np.int64) for v in (size, mtime_ns, step))
        t["origin"] = np.stack([x0, y0], axis=1).astype(np.int64)
        g = f.create_group("subwsi")
        g["slide"] = subwsi[:, 0].astype(np.int32)
        g["extent"] = subwsi[:, 1:].astype(np.int32)
        g["offsets"] = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        g.create_dataset("patches", data=np.concatenate(rows), chunks=True)
    data = buf.getbuffer()
    with atomic_path(out, size_hint=len(data)) as tmp:
        check_free_space(out.parent, len(data), out)
        tmp.write_bytes(data)
