"""Find similar, in the worker thread: the regions most like the selected one, in the open slide or in a region
index (care index), each with a thumbnail read from its slide. No Qt here; the gallery (`_gallery.py`) only
shows what `find_similar` returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THUMB_PX = 128  # thumbnail side, screen px


@dataclass
class SimilarQuery:
    """What a search needs, taken on the Qt thread: the open result's encoding and its slide, the region asked
    about, how many answers, and the index folder (None: search the open slide only)."""

    encoding: object
    slide: str  # the slide's name (its file stem, as an index names it)
    slide_path: str
    region: int
    k: int = 12
    index: Path | None = None


@dataclass
class GalleryItem:
    """One answer with what the gallery shows and what a click needs: the slide file (None when it is not
    found here), the region's patches and its outline (level-0 px shapely geometry; both None for an index shard
    without patches), and a thumbnail (None without the slide file)."""

    hit: object  # care_core.search.Hit
    slide_path: Path | None
    patches: tuple | None = None  # (top-left (x, y) [n, 2] of the region's patches, patch side), level-0 px
    thumbnail: np.ndarray | None = None
    geometry: object = None
    note: str = ""


_INDEX_LOCK = threading.Lock()
_LOADED: dict = {}  # (folder, index.json mtime) -> RegionIndex; only the last one is kept


def load_index(folder: Path):
    """The RegionIndex of ``folder``, loaded once while its index.json is unchanged."""
    from care_core.search import INDEX_JSON, RegionIndex

    path = Path(folder) / INDEX_JSON
    key = (str(Path(folder).resolve()), path.stat().st_mtime_ns if path.is_file() else 0)
    with _INDEX_LOCK:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = RegionIndex(folder)
        return _LOADED[key]


def find_similar(query: SimilarQuery) -> list[GalleryItem]:
    """The ``k`` regions most like the query's region (itself left out), each with its thumbnail; runs in a
    worker. An index built with another CARE model or patch encoder is refused (InvalidInputError)."""
    from care_core.regions.geometry import region_polygons
    from care_core.search.index import model_of, region_vectors
    from care_core.search.query import search_encoding

    enc = query.encoding
    if query.index is None:
        hits = search_encoding(enc, query.region, k=query.k, slide=query.slide)
        paths = {query.slide: Path(query.slide_path)}

        def patches(hit):
            return np.asarray(enc.coords)[np.asarray(enc.patch_region) == hit.region], int(enc.patch_size_level0)
    else:
        index = load_index(query.index)
        model, encoder = model_of(enc.meta)
        what = f"slide {query.slide!r}"
        vector = index.check_query(region_vectors(enc, index.representation, what)[query.region], model=model,
                                   encoder=encoder, what=what)
        hits = index.search(vector, k=query.k, slide=query.slide, region=query.region)
        paths = {name: index.slide_path(name) for name in {h.slide for h in hits}}
        paths[query.slide] = paths.get(query.slide) or Path(query.slide_path)

        def patches(hit):
            return index.region_patches(hit.slide, hit.region)
    items = [GalleryItem(hit, paths.get(hit.slide), patches(hit)) for hit in hits]
    for item in items:
        if item.patches is not None and len(item.patches[0]):
            xy, side = item.patches
            item.geometry = region_polygons(np.zeros(len(xy), np.int64), xy, side)[0]
    _add_thumbnails(items)
    return items


def _add_thumbnails(items: list[GalleryItem]) -> None:
    """Each item's thumbnail, reading each slide once (opened lazily, closed after)."""
    from care_core.errors import CareError
    from care_core.search.thumbs import region_thumbnail
    from care_core.wsi import open_slide

    by_slide: dict = {}
    for item in items:
        by_slide.setdefault(item.slide_path, []).append(item)
    for path, mine in by_slide.items():
        if path is None:
            for item in mine:
                item.note = "slide file not found"
            continue
        try:
            with open_slide(path) as slide:
                for item in mine:
                    xy, side = item.patches or (None, 0)
                    item.thumbnail = region_thumbnail(slide, item.hit.bbox, xy, side, size=THUMB_PX)
        except (CareError, OSError, ValueError) as exc:
            for item in mine:
                item.note = f"cannot read the slide ({type(exc).__name__})"
