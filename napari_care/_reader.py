"""napari readers: any pyramidal whole-slide image as one lazy multiscale layer; QuPath GeoJSON / ASAP XML
annotations as a Shapes layer over the open slide."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from care_core.errors import CareError
from care_core.wsi import open_slide

from ._layers import LayerData, annotation_layer, slide_layer

# vendor slide formats no other napari reader opens: a failure here is reported with the library's message
_SLIDE_ONLY = (".svs", ".ndpi", ".scn", ".bif", ".svslide", ".mrxs", ".vms", ".vmu")
_ANNOTATIONS = (".geojson", ".json", ".xml")


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Return a reader for one slide or annotation file, or None (so napari tries another reader)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not Path(path).is_file():
        return None
    if Path(path).suffix.lower() in _ANNOTATIONS:
        return _annotation_reader(path)
    try:
        with warnings.catch_warnings():  # the reader itself says what is missing, in the window's words
            warnings.simplefilter("ignore")
            with open_slide(path):  # a cheap check (metadata only); closed again if napari picks another reader
                pass
    except CareError as exc:
        if Path(path).suffix.lower() in _SLIDE_ONLY:
            return _failing_reader(exc)  # the napari user gets the library's message, not another reader's
        return None
    except (OSError, ValueError):
        return None

    def read(_path: str) -> list[LayerData]:
        _scale_bar_on()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer = slide_layer(open_slide(path))
        for w in caught:  # the library's advice names its argument (mpp=); the window has a field for it
            message = str(w.message)
            if "records no pixel size" in message:
                message = (f"{path}: the file records no pixel size (µm/px); enter the scan's pixel size in the "
                           "CARE widget's 'slide µm/px' field before Run (e.g. 0.25 for 40x, 0.5 for 20x)")
            warnings.warn(message, w.category, stacklevel=2)
        return [layer]

    return read


def _failing_reader(exc: Exception) -> Callable[[str], list[LayerData]]:
    def read(_path: str) -> list[LayerData]:
        from napari.utils.notifications import show_error

        show_error(str(exc))
        raise exc

    return read


def _annotation_reader(path: str) -> Callable[[str], list[LayerData]] | None:
    """Annotations over the current viewer's slide (µm from its pixel size); None for other JSON / XML files."""
    from care_core.regions import read_annotations

    try:
        annotations = read_annotations(path)
    except CareError:
        return None

    def read(_path: str) -> list[LayerData]:
        return [annotation_layer(annotations, _current_slide_mpp(), name=Path(path).name)]

    return read


def _current_slide_mpp() -> float | None:
    import napari

    viewer = napari.current_viewer()
    for layer in [] if viewer is None else viewer.layers:
        if layer.metadata.get("path") and layer.metadata.get("mpp"):
            return float(layer.metadata["mpp"])
    return None


def _scale_bar_on() -> None:
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        from ._view import show_scale_bar

        show_scale_bar(viewer)
