"""ASAP XML annotations (``<ASAP_Annotations>``), read and written in level-0 px.

ASAP polygons have no holes. Holes are written as polygons of the group ``Exclusion`` that carry the
name of the annotation they cut; on reading, same-named polygons of one group are merged into one
annotation and same-named ``Exclusion`` polygons are cut out of it (an ``Exclusion`` polygon whose name
matches nothing cuts every annotation it overlaps, as in Camelyon-style files).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

from care_core._atomic import atomic_path
from care_core.errors import AnnotationFileError
from care_core.regions.shapes import Annotation, polygonal

__all__ = ["read_asap_xml", "write_asap_xml", "EXCLUSION_GROUP"]

EXCLUSION_GROUP = "Exclusion"
_AREA_TYPES = {"polygon", "spline", "rectangle", "pointset"}


def read_asap_xml(path: str | Path) -> list[Annotation]:
    """Polygon annotations of an ASAP XML file (classification = PartOfGroup, None for "None")."""
    import shapely
    from shapely.geometry import Polygon

    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as err:
        raise AnnotationFileError(f"{path}: not valid XML ({err}); re-export the annotations from ASAP") from err
    if root.tag != "ASAP_Annotations":
        raise AnnotationFileError(f"{path}: XML root is <{root.tag}>, not <ASAP_Annotations>; export it from ASAP")
    group_color = {g.get("Name"): _hex_rgb(g.get("Color")) for g in root.iter("Group")}
    merged: dict[tuple[str | None, str | None], list] = {}  # (name, group) -> polygons, in file order
    cuts: list[tuple[str | None, object]] = []
    skipped = 0
    for i, elem in enumerate(root.iter("Annotation")):
        try:
            points = sorted(elem.iter("Coordinate"), key=lambda c: _number(c.get("Order", "0"), "Order"))
            xy = [(_number(c.get("X"), "X"), _number(c.get("Y"), "Y")) for c in points]
        except ValueError as err:
            raise AnnotationFileError(f"{path}: annotation {i} has a bad coordinate ({err}); re-export it") from err
        area = polygonal(Polygon(xy)) if elem.get("Type", "Polygon").lower() in _AREA_TYPES and len(xy) >= 3 else None
        if area is None:
            skipped += 1
            continue
        group = elem.get("PartOfGroup")
        group = None if group in (None, "", "None") else group
        name = elem.get("Name") or None
        if group is not None and group.lower() == EXCLUSION_GROUP.lower():
            cuts.append((name, area))
        else:
            merged.setdefault((name, group), []).append((area, _hex_rgb(elem.get("Color"))))
    out = []
    for (name, group), items in merged.items():
        geom = polygonal(shapely.union_all([g for g, _ in items]))
        for cut_name, cut in cuts:
            matches_any = any(cut_name == n for n, _ in merged)
            if (cut_name == name) or (not matches_any and geom.intersects(cut)):
                geom = polygonal(geom.difference(cut))
                if geom is None:
                    break
        if geom is None:
            continue
        color = group_color.get(group) if group is not None else None
        out.append(Annotation(geom, classification=group, name=name, color=color or items[0][1]))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} annotation(s) without area (dots, lines)", stacklevel=2)
    return out


def write_asap_xml(annotations: Sequence[Annotation], path: str | Path) -> Path:
    """Write ``annotations`` as ASAP XML atomically: one Polygon per part, holes as ``Exclusion`` polygons."""
    root = ElementTree.Element("ASAP_Annotations")
    annos = ElementTree.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    for i, ann in enumerate(annotations):
        name = ann.name or f"Annotation {i}"
        group = ann.classification or "None"
        color = _rgb_hex(ann.color or (244, 250, 88))
        if group != "None":
            groups.setdefault(group, color)
        parts = list(ann.geometry.geoms) if hasattr(ann.geometry, "geoms") else [ann.geometry]
        for part in parts:
            _polygon(annos, name, group, color, part.exterior.coords)
            for hole in part.interiors:
                groups.setdefault(EXCLUSION_GROUP, "#000000")
                _polygon(annos, name, EXCLUSION_GROUP, "#000000", hole.coords)
    elem = ElementTree.SubElement(root, "AnnotationGroups")
    for group, color in groups.items():
        g = ElementTree.SubElement(elem, "Group", Name=group, PartOfGroup="None", Color=color)
        ElementTree.SubElement(g, "Attributes")
    ElementTree.indent(root)
    text = '<?xml version="1.0"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _polygon(parent, name: str, group: str, color: str, ring) -> None:
    elem = ElementTree.SubElement(parent, "Annotation", Name=name, Type="Polygon", PartOfGroup=group, Color=color)
    coords = ElementTree.SubElement(elem, "Coordinates")
    for order, (x, y) in enumerate(list(ring)[:-1]):  # ASAP rings are open
        ElementTree.SubElement(coords, "Coordinate", Order=str(order), X=repr(float(x)), Y=repr(float(y)))


def _number(text: str | None, what: str) -> float:
    """A finite number of attribute ``what``; some ASAP files from comma-decimal locales write ``1234,5``."""
    if text is None:
        raise ValueError(f"missing {what}")
    try:
        value = float(text.replace(",", ".") if "." not in text else text)
    except ValueError:
        raise ValueError(f"{what}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}={text!r} is not finite")
    return value


def _hex_rgb(text: str | None) -> tuple[int, int, int] | None:
    if not text or not text.startswith("#") or len(text) != 7:
        return None
    try:
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    except ValueError:
        return None


def _rgb_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)
