"""napari reader: any pyramidal whole-slide image as one lazy multiscale layer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from care_core.errors import CareError
from care_core.wsi import open_slide

from ._layers import LayerData, slide_layer


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Return a reader for one slide file, or None (so napari tries another reader) if we cannot read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not Path(path).is_file():
        return None
    try:
        with open_slide(path):  # a cheap check (metadata only); closed again if napari picks another reader
            pass
    except (CareError, OSError, ValueError):
        return None

    def read(_path: str) -> list[LayerData]:
        return [slide_layer(open_slide(path))]

    return read
