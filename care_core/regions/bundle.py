"""Every export of one slide's regions in one call (the `care export` command and the napari Export button)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from care_core.errors import InvalidInputError

__all__ = ["EXPORT_FORMATS", "export_regions", "export_name", "export_encoding_file", "export_file", "format_for_path"]

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
    names = {fmt: export_name(stem, fmt) for fmt in formats}  # unknown formats fail before any write
    size, mpp = _slide_geometry(encoding, stem, names, slide_size_level0, slide_mpp)
    return {fmt: Path(_write(encoding, fmt, Path(out_dir) / name, size, mpp, stem)) for fmt, name in names.items()}


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
    return Path(_write(encoding, fmt, path, size, mpp, path.stem))


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
    import zipfile

    from care_core.model.encoding import SlideEncoding

    path = Path(encoding_path)
    try:
        encoding = SlideEncoding.load_npz(path)
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: no such file; give a <slide>_encoding.npz written by care encode") from err
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise InvalidInputError(f"{path}: not a CARE encoding ({err}); give a <slide>_encoding.npz from care encode") from err
    name = path.name
    stem = name[: -len("_encoding.npz")] if name.endswith("_encoding.npz") else path.stem
    size, slide_mpp = None, None
    if slide is not None:
        from care_core.wsi import open_slide

        with open_slide(slide, mpp=mpp) as s:
            size, slide_mpp = s.dimensions, s.mpp
    return export_regions(encoding, out_dir, stem, formats=formats, slide_size_level0=size, slide_mpp=slide_mpp)

