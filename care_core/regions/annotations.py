"""Polygon annotations in level-0 px, read from QuPath GeoJSON or ASAP XML (``read_annotations``).

Every fault of a file (bad JSON or XML, a non-finite coordinate, a classification, colour or properties of the
wrong kind, nesting too deep to parse) is one AnnotationFileError line naming the file and the feature.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from care_core.errors import AnnotationFileError
from care_core.regions.asap import read_asap_xml
from care_core.regions.shapes import Annotation, finite_coordinates, polygonal

__all__ = ["Annotation", "read_annotations", "read_qupath_geojson", "polygonal"]


def read_annotations(path: str | Path) -> list[Annotation]:
    """Polygon annotations of a QuPath GeoJSON (``.geojson``/``.json``) or ASAP XML (``.xml``) file, in file order.

    Points and lines (no area) are skipped with a warning; self-intersecting polygons are repaired.
    Raises AnnotationFileError when the file is missing, unreadable, of another kind or holds a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationFileError(f"{path}: no such annotation file; check the path")
    try:
        head = path.read_bytes()[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as err:
        raise AnnotationFileError(f"{path}: cannot be read ({err}); check its permissions") from err
    if head[:1] in (b"{", b"["):
        return read_qupath_geojson(path)
    if head[:1] == b"<":
        return read_asap_xml(path)
    raise AnnotationFileError(
        f"{path}: neither GeoJSON nor XML; export the annotations from QuPath (File > Export objects as GeoJSON) "
        f"or from ASAP (.xml)"
    )


def read_qupath_geojson(path: str | Path) -> list[Annotation]:
    """Annotations of a QuPath GeoJSON export: a FeatureCollection, a list of Features, or one Feature."""
    from shapely.geometry import shape

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationFileError(f"{path}: not valid JSON ({err}); re-export it from QuPath as GeoJSON") from err
    except RecursionError:
        raise AnnotationFileError(f"{path}: JSON nested too deeply to be annotations; re-export it from QuPath as "
                                  "GeoJSON") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationFileError(
            f"{path}: JSON but not GeoJSON features (top level {type(data).__name__} "
            f"{data.get('type') if isinstance(data, dict) else ''}); export objects as GeoJSON from QuPath"
        )
    if not isinstance(features, list):
        raise AnnotationFileError(f"{path}: 'features' is a {type(features).__name__}, not a list; re-export it from QuPath")
    out, skipped = [], 0
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationFileError(f"{path}: item {i} is not a GeoJSON Feature; re-export it from QuPath")
        try:
            with warnings.catch_warnings():  # shapely warns on NaN vertices; the check below names them
                warnings.simplefilter("ignore", RuntimeWarning)
                geom = None if feature.get("geometry") is None else shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise AnnotationFileError(f"{path}: feature {i} has a broken geometry ({err}); re-export it") from err
        if geom is not None and not finite_coordinates(geom):
            raise AnnotationFileError(f"{path}: feature {i} has a NaN or infinite coordinate; fix or re-export it")
        area = polygonal(geom)
        if area is None:
            skipped += 1
            continue
        props = feature.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise AnnotationFileError(f"{path}: feature {i} has properties {_short(props)}, not an object; re-export it")
        props = dict(props)
        name, color = _qupath_class(props.pop("classification", None), f"{path}: feature {i}")
        label = props.pop("name", None)
        out.append(Annotation(area, classification=name, name=None if label is None else str(label), color=color,
                              properties=props))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} feature(s) without area (points or lines)", stacklevel=2)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rgb(values: Any, where: str) -> tuple[int, int, int]:
    """(r, g, b) of a QuPath colour list: three numbers 0-255 (NaN is not in range)."""
    rgb = list(values[:3]) if isinstance(values, (list, tuple)) else []
    if len(rgb) != 3 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb):
        raise AnnotationFileError(f"{where} has colour {_short(values)}; a colour is three numbers 0-255")
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _qupath_class(value: Any, where: str) -> tuple[str | None, tuple[int, int, int] | None]:
    """(name, rgb) of a QuPath classification: {"name", "color": [r, g, b]} (0.3+), {"name", "colorRGB": int}
    (0.2) or a bare string."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise AnnotationFileError(f"{where} has classification {_short(value)}; a classification is a class name or "
                                  "an object with a 'name'")
    name = value.get("name")
    if name is None and isinstance(value.get("names"), list):
        name = ": ".join(map(str, value["names"]))
    if name is not None and not isinstance(name, str):
        raise AnnotationFileError(f"{where} has classification name {_short(name)}, not text; re-export it")
    if value.get("color") is not None:
        return name, _rgb(value["color"], where)
    rgb = value.get("colorRGB")
    if rgb is None:
        return name, None
    if not isinstance(rgb, int) or isinstance(rgb, bool):
        raise AnnotationFileError(f"{where} has colorRGB {_short(rgb)}; QuPath writes it as an integer")
    rgb &= 0xFFFFFF
    return name, ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
