"""Region search: an index of CARE region (and slide) embeddings for a cohort, and exact cosine queries on it.

An index is a folder: one shard per slide (``<slide>.npz``: region embeddings [R, E] float32, centroids and
bounding boxes in level-0 px, patch counts, predicted class, the slide embedding) and ``index.json`` (the CARE
model's sha256 and the patch encoder every shard came from, and per slide the sha256 of its source encoding).
A build adds or replaces one shard at a time, each written atomically and then recorded in ``index.json``
(also atomic), under the folder's lock: a build stopped anywhere leaves an index of the slides it finished.
"""

from care_core.search.index import INDEX_JSON, build_index, remove_slides
from care_core.search.query import Hit, RegionIndex, search_index, top_k, write_hits

__all__ = ["build_index", "remove_slides", "RegionIndex", "Hit", "search_index", "write_hits", "top_k", "INDEX_JSON"]
