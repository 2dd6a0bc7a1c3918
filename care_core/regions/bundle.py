"""Every export of one slide's regions in one call (the `care export` command and the napari Export button)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from care_core.errors import InvalidInputError

__all__ = ["EXPORT_FORMATS", "export_regions", "export_name", "export_encoding_file"]

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
    from care_core.regions.export import write_asap, write_geojson, write_region_csv
    from care_core.regions.mask import write_label_mask

    names = {fmt: export_name(stem, fmt) for fmt in formats}  # unknown formats fail before any write
    out_dir = Path(out_dir)
    size = slide_size_level0 or encoding.meta.get("slide_size_level0")
    mpp = slide_mpp if slide_mpp is not None else encoding.meta.get("slide_mpp")
    if "mask" in names and size is None:
        raise InvalidInputError(
            f"{stem}: the label mask needs the slide's size, which this encoding does not record; "
            f"give the slide file (care export --slide)"
        )
    writers = {
        "geojson": lambda p: write_geojson(encoding, p, name=stem),
        "asap": lambda p: write_asap(encoding, p),
        "mask": lambda p: write_label_mask(encoding, p, slide_size_level0=tuple(size), mpp=mpp),
        "csv": lambda p: write_region_csv(encoding, p),
        "npz": lambda p: encoding.save_npz(p),
    }
    return {fmt: Path(writers[fmt](out_dir / name)) for fmt, name in names.items()}


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
