"""Pixel size, objective power and integrity checks read cheaply from TIFF tags and descriptions."""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import tifffile

from care_core.errors import MissingMppError, SlideOpenError

__all__ = ["MPP_MIN", "MPP_MAX", "aperio_mpp", "ome_mpp", "resolution_mpp", "file_mpp", "resolve_mpp",
           "check_tile_extents"]

MPP_MIN = 0.05  # µm/px: finer than any optical scanner
MPP_MAX = 100.0  # µm/px: coarser than any useful whole-slide scan

# ImageDescription, StripOffsets, StripByteCounts, X/YResolution, TileOffsets, TileByteCounts, SubIFDs, JPEGTables
_ESSENTIAL_TAGS = frozenset({270, 273, 279, 282, 283, 324, 325, 330, 347})
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
_UM_PER_RESUNIT = {tifffile.RESUNIT.INCH: 25400.0, tifffile.RESUNIT.CENTIMETER: 1e4,
                   tifffile.RESUNIT.MILLIMETER: 1e3, tifffile.RESUNIT.MICROMETER: 1.0}


def aperio_mpp(description: str) -> float | None:
    """µm/px from an Aperio ImageDescription (``... |MPP = 0.4990|...``), or None."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    return float(match.group(1)) if match else None


def ome_mpp(ome_xml: str) -> float | None:
    """µm/px from the first OME ``Pixels/@PhysicalSizeX`` (unit ``PhysicalSizeXUnit``, µm by default)."""
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    for elem in root.iter():
        if elem.tag.endswith("Pixels") and "PhysicalSizeX" in elem.attrib:
            unit = elem.attrib.get("PhysicalSizeXUnit", "µm")
            scale = _UM_PER_UNIT.get(unit)
            return None if scale is None else float(elem.attrib["PhysicalSizeX"]) * scale
    return None


def resolution_mpp(page: tifffile.TiffPage) -> float | None:
    """µm/px from the XResolution/ResolutionUnit tags of ``page``, or None when absent or unitless."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    scale = _UM_PER_RESUNIT.get(tags["ResolutionUnit"].value)
    num, den = tags["XResolution"].value
    if scale is None or num == 0 or den == 0:
        return None
    return scale * den / num


def file_mpp(tf: tifffile.TiffFile) -> tuple[float | None, str]:
    """(µm/px at level 0, where it came from) read from the file; (None, "") when it records none."""
    page = tf.pages.first
    if tf.is_svs:
        value = aperio_mpp(page.description)
        if value is not None:
            return value, "Aperio description MPP"
    if tf.is_ome and tf.ome_metadata:
        value = ome_mpp(tf.ome_metadata)
        if value is not None:
            return value, "OME PhysicalSizeX"
    value = resolution_mpp(page)
    if value is not None:
        return value, "TIFF XResolution/ResolutionUnit tags"
    return None, ""


def resolve_mpp(path: str | Path, user_mpp: float | None, found_mpp: float | None, source: str) -> float | None:
    """The µm/px to use: the user's value over the file's; validate it; warn when unknown."""
    if user_mpp is not None:
        if not MPP_MIN <= user_mpp <= MPP_MAX:
            raise MissingMppError(
                f"{path}: mpp={user_mpp!r} µm/px is outside the plausible range [{MPP_MIN}, {MPP_MAX}]; "
                f"pass the scan's real pixel size (e.g. mpp=0.25 for 40x, 0.5 for 20x)"
            )
        return float(user_mpp)
    if found_mpp is None:
        warnings.warn(
            f"{path}: the file records no pixel size (µm/px); pass mpp= (CLI: --mpp) to enable "
            f"patching at a physical resolution",
            UserWarning,
            stacklevel=4,  # the caller of open_slide
        )
        return None
    if not MPP_MIN <= found_mpp <= MPP_MAX:
        raise MissingMppError(
            f"{path}: pixel size {found_mpp:.4g} µm/px (from the {source}) is outside the plausible range "
            f"[{MPP_MIN}, {MPP_MAX}]; pass the real pixel size with mpp= (CLI: --mpp)"
        )
    return float(found_mpp)


def _truncated(path: str | Path, size: int, what: str, end: int) -> SlideOpenError:
    return SlideOpenError(
        f"{path}: file is truncated ({size} bytes, but {what} ends at byte {end}); "
        f"the copy is incomplete — copy or download the slide again"
    )


def _tag_values_end(tf: tifffile.TiffFile, ifd_offset: int) -> int:
    """End (byte) of the farthest essential tag value stored outside the IFD at ``ifd_offset``; tifffile
    drops such tags with only a log message when a partial copy cuts them (e.g. the OME-XML description)."""
    fmt, fh = tf.tiff, tf.filehandle
    fh.seek(ifd_offset)
    (count,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
    entries = fh.read(count * fmt.tagsize)
    end = 0
    for i in range(len(entries) // fmt.tagsize):
        code, dtype, n, value = struct.unpack(fmt.tagheaderformat, entries[i * fmt.tagsize : (i + 1) * fmt.tagsize])
        if code not in _ESSENTIAL_TAGS:
            continue  # a bad private tag does not stop reading pixels
        item = tifffile.TIFF.DATA_FORMATS.get(dtype)
        nbytes = n * struct.calcsize("<" + item) if item else 0
        if nbytes > fmt.tagoffsetthreshold:
            (offset,) = struct.unpack(fmt.offsetformat, value)
            end = max(end, offset + nbytes)
    return end


def check_tile_extents(path: str | Path, tf: tifffile.TiffFile, pages: list[tifffile.TiffPage]) -> None:
    """Raise SlideOpenError when an IFD, SubIFD, tile or strip lies beyond the end of the file.

    A partial copy still opens (tifffile drops what it cannot reach) and would serve blank tiles or
    lose levels; this reads only IFD pointers and the offset/bytecount tags.
    """
    fh = tf.filehandle
    size = fh.size
    next_at = tf.pages.next_page_offset  # where the last readable IFD stores the offset of the next
    if next_at is not None:
        fh.seek(next_at)
        raw = fh.read(tf.tiff.offsetsize)
        if len(raw) < tf.tiff.offsetsize or int.from_bytes(raw, "little" if tf.byteorder == "<" else "big") != 0:
            raise _truncated(path, size, "the chain of image directories", next_at + tf.tiff.offsetsize)
    for page in tf.pages:
        values_end = _tag_values_end(tf, page.offset)
        if values_end > size:
            raise _truncated(path, size, f"a tag value of page {page.index}", values_end)
        subifds = page.tags.get("SubIFDs")
        last_subifd = 0 if subifds is None else int(np.max(subifds.value))
        if last_subifd >= size:
            raise _truncated(path, size, "a reduced-resolution level (SubIFD)", last_subifd)
    for index, page in enumerate(pages):
        offsets = np.asarray(page.dataoffsets, np.int64)
        if offsets.size == 0:
            raise SlideOpenError(f"{path}: page {index} has no image data; the file is corrupt, re-export it")
        end = int((offsets + np.asarray(page.databytecounts, np.int64)).max())
        if end > size:
            raise _truncated(path, size, f"image data of page {index}", end)
