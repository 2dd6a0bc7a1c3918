"""napari writer: a CARE regions layer saved as QuPath GeoJSON, ASAP XML, OME-TIFF label mask, CSV or npz
(the format from the file name's ending)."""

from __future__ import annotations

from typing import Any


def write_regions(path: str, data: Any, meta: dict) -> list[str]:
    """Save the regions layer ``meta`` describes to ``path`` (atomically); returns the written path."""
    from care_core.errors import InvalidInputError
    from care_core.regions import export_file

    encoding = (meta.get("metadata") or {}).get("care_encoding")
    if encoding is None:
        raise InvalidInputError(f"layer {meta.get('name')!r} is not a CARE regions layer; save a '… regions' layer")
    return [str(export_file(encoding, path))]
