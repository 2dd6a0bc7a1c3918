"""Every export of one slide's regions in one call (the `care export` command and the napari Export button).

An encoding is checked before anything is written (patch regions present, one coordinate per patch, region ids
and the ROI inside its regions), and a call's files are written as one set: all temp files first, then renamed
together, so a full disk or a read-only folder leaves the previous files or none, never a mix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError

__all__ = ["EXPORT_FORMATS", "export_regions", "export_name", "export_encoding_file", "export_file", "format_for_path",
           "check_exportable", "read_encoding_file"]

# format -> file name suffix after the slide stem
EXPORT_FORMATS = {
    "geojson": "_regions.geojson",  # QuPath: File > Import objects
    "asap": "_regions.xml",  # ASAP annotations
    "mask": "_regions.ome.tif",  # pyramidal label mask, same level-0 size as the slide
    "csv": "_regions.csv",  # the region table with predictions
    "npz": "_encoding.npz",  # embeddings and everything else (SlideEncoding.load_npz)
}


def export_name(stem: str, fmt: str) -> str:
    """The file name of format ``fmt`` for a slide named ``stem``."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInputError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    return f"{stem}{EXPORT_FORMATS[fmt]}"


def _write(encoding, fmt: str, path: Path, size: tuple[int, int] | None, mpp: float | None, stem: str) -> Path:
    from care_core.regions.export import write_asap, write_geojson, write_region_csv
    from care_core.regions.mask import write_label_mask

    if fmt == "geojson":
        return write_geojson(encoding, path, name=stem)
    if fmt == "asap":
        return write_asap(encoding, path)
    if fmt == "mask":
        return write_label_mask(encoding, path, slide_size_level0=tuple(size), mpp=mpp)
    if fmt == "csv":
        return write_region_csv(encoding, path)
    return encoding.save_npz(path)


def check_exportable(encoding, where: str) -> None:
    """Raise InvalidInputError naming ``where`` when ``encoding``'s regions cannot be drawn as they are: no patch
    regions, coordinates or grid not one (x, y) per patch, negative coordinates, region ids outside 0..R-1, an ROI
    that is not one of the R regions, per-region arrays of another length, a patch size that is not positive."""
    again = "the encoding is damaged: encode the slide again (care encode)"
    region, coords, pi = encoding.patch_region, encoding.coords, encoding.pi
    if region is None or coords is None or pi is None or encoding.patch_size_level0 is None:
        raise InvalidInputError(f"{where}: holds no patch regions (patch_region, coords, pi); encode the slide with CARE "
                                "(care encode)")
    region, coords, n_regions = np.asarray(region), np.asarray(coords), len(pi)
    n = len(region)
    if region.ndim != 1 or (n and region.dtype.kind not in "iu"):
        raise InvalidInputError(f"{where}: patch_region has shape {region.shape} and type {region.dtype}, not one "
                                f"integer per patch; {again}")
    for name, xy in (("coords", coords), ("grid", encoding.grid)):
        if xy is not None and np.shape(xy) != (n, 2):
            raise InvalidInputError(f"{where}: {name} has shape {np.shape(xy)} but there are {n} patches (need "
                                    f"({n}, 2)); {again}")
    if n and ((coords.dtype.kind not in "iu" and not np.isfinite(coords).all()) or coords.min() < 0):
        raise InvalidInputError(f"{where}: coords hold negative or non-finite values; {again}")
    if n and (region.min() < 0 or region.max() >= n_regions):
        raise InvalidInputError(f"{where}: region ids run from {region.min()} to {region.max()} but the encoding has "
                                f"{n_regions} regions (0..{n_regions - 1}); {again}")
    if encoding.roi is not None and not 0 <= encoding.roi < n_regions:
        raise InvalidInputError(f"{where}: ROI {encoding.roi} is not one of its {n_regions} regions (0..{n_regions - 1}); "
                                f"{again}")
    for name in ("alpha", "beta", "region_subregion", "region_embeddings"):
        value = getattr(encoding, name)
        if value is not None and len(value) != n_regions:
            raise InvalidInputError(f"{where}: {name} has {len(value)} rows for {n_regions} regions; {again}")
    if not int(encoding.patch_size_level0) > 0:
        raise InvalidInputError(f"{where}: patch_size_level0={encoding.patch_size_level0} is not positive; {again}")


def _slide_geometry(encoding, stem: str, formats, size, mpp) -> tuple:
    """(level-0 size, µm/px) for the mask: the caller's, else what the pipeline recorded in ``encoding.meta``."""
    size = size or encoding.meta.get("slide_size_level0")
    mpp = mpp if mpp is not None else encoding.meta.get("slide_mpp")
    if "mask" in formats and size is None:
        raise InvalidInputError(
            f"{stem}: the label mask needs the slide's size, which this encoding does not record; "
            f"give the slide file (care export --slide)"
        )
    return size, mpp


def export_regions(
    encoding,
    out_dir: str | Path,
    stem: str,
    *,
    formats: Sequence[str] = tuple(EXPORT_FORMATS),
    slide_size_level0: tuple[int, int] | None = None,
    slide_mpp: float | None = None,
) -> dict[str, Path]:
    """Write ``formats`` of ``encoding`` to ``out_dir`` as ``<stem>_regions.*`` / ``<stem>_encoding.npz``, each
    atomically; returns {format: path}.

    slide_size_level0 / slide_mpp: the slide's level-0 (width, height) and µm/px for the label mask; by
    default what the pipeline recorded in ``encoding.meta`` ("slide_size_level0", "slide_mpp").
    """
    from care_core._atomic import atomic_paths, check_output_dir

    names = {fmt: export_name(stem, fmt) for fmt in formats}  # unknown formats fail before any write
    size, mpp = _slide_geometry(encoding, stem, names, slide_size_level0, slide_mpp)
    check_exportable(encoding, f"encoding of {stem!r}")
    out = check_output_dir(out_dir)  # a read-only or full folder: one line, before any file
    paths = {fmt: out / name for fmt, name in names.items()}
    with atomic_paths(list(paths.values())) as tmps:  # renamed together once every file is written
        for fmt, tmp in zip(paths, tmps):
            _write(encoding, fmt, tmp, size, mpp, stem)
    return paths


def format_for_path(path: str | Path) -> str:
    """The export format a file name asks for, by its ending (``.geojson``, ``.xml``, ``.ome.tif``, ``.csv``,
    ``.npz``)."""
    name = Path(path).name.lower()
    for fmt, ending in (("geojson", ".geojson"), ("geojson", ".json"), ("asap", ".xml"), ("mask", ".ome.tif"),
                        ("mask", ".ome.tiff"), ("csv", ".csv"), ("npz", ".npz")):
        if name.endswith(ending):
            return fmt
    raise InvalidInputError(
        f"{Path(path).name}: unknown export kind; end the name in .geojson, .xml, .ome.tif, .csv or .npz"
    )


def export_file(
    encoding,
    path: str | Path,
    *,
    slide_size_level0: tuple[int, int] | None = None,
    slide_mpp: float | None = None,
) -> Path:
    """Write one export to exactly ``path``, its format chosen by the ending (``format_for_path``)."""
    path = Path(path)
    fmt = format_for_path(path)
    size, mpp = _slide_geometry(encoding, path.stem, [fmt], slide_size_level0, slide_mpp)
    check_exportable(encoding, f"encoding of {path.stem!r}")
    return Path(_write(encoding, fmt, path, size, mpp, path.stem))


_STORED = {"scalars_json", "meta_json", "predictions_json"}  # the JSON members of an encoding .npz
_PREDICTION = re.compile(r"^pred\d+_(slide|region)$")


def read_encoding_file(path: str | Path):
    """A ``<stem>_encoding.npz`` written by ``care encode`` as a SlideEncoding, checked for export
    (``check_exportable``). Raises InvalidInputError naming the file when it is missing, empty, not an encoding,
    holds a field this version does not know (written by a newer napari-care) or regions that cannot be drawn."""
    import zipfile
    from dataclasses import fields

    from care_core.model.encoding import SlideEncoding

    path = Path(path)
    known = {f.name for f in fields(SlideEncoding)}
    redo = "give a <slide>_encoding.npz written by care encode"
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file; {redo}")
    try:
        with np.load(path, allow_pickle=False) as z:
            members = set(z.files)
            scalars = json.loads(str(z["scalars_json"])) if "scalars_json" in members else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise InvalidInputError(f"{path}: not a CARE encoding (an empty, truncated or foreign file: "
                                f"{type(err).__name__}); {redo}") from None
    missing = sorted({"slide_embedding", "scalars_json", "meta_json"} - members)
    if missing:
        raise InvalidInputError(f"{path}: lacks {missing}, so it is not a CARE encoding; {redo}")
    newer = sorted(m for m in members - known - _STORED if not _PREDICTION.match(m))
    newer += sorted(set(scalars) - known) if isinstance(scalars, dict) else ["scalars_json"]
    if newer:
        raise InvalidInputError(f"{path}: holds field(s) {newer} that this napari-care does not know (written by a "
                                "newer version?); export it with the version that wrote it, or upgrade")
    try:
        encoding = SlideEncoding.load_npz(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise InvalidInputError(f"{path}: not a CARE encoding ({type(err).__name__}: {err}); {redo}") from None
    check_exportable(encoding, str(path))
    return encoding


def export_encoding_file(
    encoding_path: str | Path,
    out_dir: str | Path,
    *,
    slide: str | Path | None = None,
    mpp: float | None = None,
    formats: Sequence[str] = tuple(EXPORT_FORMATS),
) -> dict[str, Path]:
    """``export_regions`` of a saved ``<stem>_encoding.npz`` (as ``care encode`` writes it).

    slide: the slide file, for the label mask's size and µm/px (``mpp`` overrides the file's µm/px);
    without it the mask uses what the encoding records. The stem is the file name before ``_encoding.npz``.
    """
    path = Path(encoding_path)
    encoding = read_encoding_file(path)
    name = path.name
    stem = name[: -len("_encoding.npz")] if name.endswith("_encoding.npz") else path.stem
    size, slide_mpp = None, None
    if slide is not None:
        from care_core.wsi import open_slide

        with open_slide(slide, mpp=mpp) as s:
            size, slide_mpp = s.dimensions, s.mpp
    return export_regions(encoding, out_dir, stem, formats=formats, slide_size_level0=size, slide_mpp=slide_mpp)

