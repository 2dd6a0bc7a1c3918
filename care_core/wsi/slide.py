"""Open a whole-slide image: a lazy RGB pyramid of dask arrays, its pixel size and associated images.

tiffslide reads every TIFF-based format (Aperio SVS, NDPI, OME-TIFF with SubIFDs, generic tiled or
BigTIFF pyramids); openslide, when installed, adds MRXS, VMS and friends. A slide whose pyramid stops
early (or has none) gets lower levels built lazily by 2x2 mean coarsening, so napari still receives a
multiscale list whose coarse levels are computed only where they are viewed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import dask.array as da
import numpy as np

from care_core.errors import SlideOpenError
from care_core.wsi._metadata import check_tile_extents, file_mpp, resolve_mpp
from care_core.wsi._tiles import (
    TileReader,
    add_lazy_levels,
    level_token,
    tiff_tile_reader,
    tiled_level,
    zarr_reader,
)

__all__ = ["SlideInfo", "Slide", "open_slide", "BACKENDS"]

BACKENDS = ("auto", "tiffslide", "openslide")
BACKGROUND_RGB = 255  # value of pixels read outside the slide (white glass)
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is: sizes in level-0 px (width, height), µm/px at level 0, vendor and extras."""

    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    objective_power: float | None
    associated_images: tuple[str, ...]


class Slide:
    """An open slide with OpenSlide-like names; ``levels`` are lazy (H, W, 3) uint8 dask arrays.

    Levels past the file's own pyramid are computed from it on demand (see module docstring).
    Thread-safe for reading: the zarr store is built once and tifffile serialises file access.
    """

    def __init__(
        self,
        info: SlideInfo,
        levels: list[da.Array],
        properties: dict[str, Any],
        *,
        readers: list[TileReader],
        associated: dict[str, Any],
        handle: Any,
    ) -> None:
        self.info = info
        self.levels = levels
        self.properties = properties
        self._readers = readers  # the file's own levels, read directly by read_region
        self._associated = associated  # name -> zero-arg loader returning an RGB array
        self._handle = handle

    # OpenSlide-like accessors
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.info.dimensions

    @property
    def level_count(self) -> int:
        return self.info.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.info.level_downsamples

    @property
    def mpp(self) -> float | None:
        return self.info.mpp

    @property
    def path(self) -> str:
        return self.info.path

    @cached_property
    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro, thumbnail… as (h, w, 3) uint8 arrays, decoded on first access."""
        return {name: load() for name, load in self._associated.items()}

    def level_mpp(self, level: int) -> float | None:
        """µm/px of ``level`` (None when the slide's mpp is unknown)."""
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-9):
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 pixels of ``level`` with top-left ``location`` in level-0 px, ``size`` = (w, h)
        in level px. Pixels outside the slide are white."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level={level} out of range (slide has {self.level_count} levels)")
        w, h = (int(v) for v in size)
        if w < 0 or h < 0:
            raise ValueError(f"size={size!r} must be non-negative (width, height)")
        ds = self.level_downsamples[level]
        x, y = int(np.floor(location[0] / ds)), int(np.floor(location[1] / ds))
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), BACKGROUND_RGB, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        if level < len(self._readers):
            block = self._readers[level](slice(y0, y1), slice(x0, x1))
        else:
            block = self.levels[level][y0:y1, x0:x1].compute()
        out[y0 - y : y1 - y, x0 - x : x1 - x] = block
        return out

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """(h, w, 3) uint8 overview whose longest side is ``min(max_px, longest slide side)``."""
        from skimage.transform import resize

        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_px
        if scale <= 1:
            return self.read_region((0, 0), 0, (w0, h0))
        out_w, out_h = max(1, int(round(w0 / scale))), max(1, int(round(h0 / scale)))
        level = self.get_best_level_for_downsample(scale)
        image = self.read_region((0, 0), level, self.level_dimensions[level])
        small = resize(image, (out_h, out_w), order=1, anti_aliasing=True, preserve_range=True)
        return np.clip(np.round(small), 0, 255).astype(np.uint8)

    def close(self) -> None:
        """Release the file handle."""
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({self.path!r}, vendor={self.info.vendor!r}, dimensions={self.dimensions}, "
                f"levels={self.level_count}, mpp={self.mpp})")


def _level_geometry(levels: list[da.Array]) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    dims = tuple((int(a.shape[1]), int(a.shape[0])) for a in levels)
    w0, h0 = dims[0]
    return dims, tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _open_tiffslide(path: Path, mpp: float | None) -> Slide:
    import tiffslide

    magic = _magic(path)
    if magic not in _TIFF_MAGICS:
        raise SlideOpenError(
            f"{path}: not a TIFF file (starts with {magic!r}); open TIFF-based slides (SVS, NDPI, OME-TIFF, "
            f"pyramidal TIFF), or install openslide (pip install 'napari-care[openslide]') for MRXS/VMS"
        )
    try:
        ts = tiffslide.TiffSlide(path)
    except Exception as err:  # tifffile raises many kinds on a damaged header or IFD chain
        raise SlideOpenError(f"{path}: corrupt TIFF ({err}); re-export or copy the slide again") from err
    try:
        return _tiffslide_slide(path, mpp, ts)
    except BaseException:
        ts.close()
        raise


def _tiffslide_slide(path: Path, mpp: float | None, ts: Any) -> Slide:
    """Build the Slide over an open TiffSlide; the caller closes ``ts`` if this raises."""
    try:
        tf = ts.ts_tifffile
        series = tf.series[0]
    except Exception as err:  # tifffile raises many kinds on a damaged header or IFD chain
        raise SlideOpenError(f"{path}: corrupt TIFF ({err}); re-export or copy the slide again") from err
    _check_rgb(path, series)
    props = _properties(path, ts)
    check_tile_extents(path, tf, [page for s in tf.series for lvl in s.levels for page in lvl.pages])
    group = ts.zarr_group
    axes = props.get("tiffslide.series-axes", "YXS")
    arrays = [group[str(i)] for i in range(ts.level_count)]
    readers = [tiff_tile_reader(lvl, zarr_reader(arr, axes)) for lvl, arr in zip(series.levels, arrays)]
    tiles = [tuple(arr.chunks[1:3] if axes == "CYX" else arr.chunks[0:2]) for arr in arrays]
    _decode_probe(path, readers, tiles)
    found, source = file_mpp(tf)
    if found is None and props.get("tiffslide.mpp-x") is not None:
        found, source = float(props["tiffslide.mpp-x"]), "scanner metadata"
    resolved = resolve_mpp(path, mpp, found, source)
    stat = path.stat()
    levels = add_lazy_levels([
        tiled_level(read, (h, w), tile, level_token(str(path.resolve()), stat.st_mtime_ns, stat.st_size, i))
        for i, (read, (w, h), tile) in enumerate(zip(readers, ts.level_dimensions, tiles))
    ])
    dims, downsamples = _level_geometry(levels)
    names = tuple(ts.associated_images.keys())
    vendor = "ome-tiff" if tf.is_ome else props.get("tiffslide.vendor") or "generic-tiff"
    info = SlideInfo(
        path=str(path), vendor=vendor, dimensions=dims[0], level_count=len(levels),
        level_dimensions=dims, level_downsamples=downsamples, mpp=resolved,
        objective_power=_float_or_none(props.get("tiffslide.objective-power")), associated_images=names,
    )
    associated = {n: (lambda n=n: np.asarray(ts.associated_images[n].convert("RGB"))) for n in names}
    return Slide(info, levels, dict(props), readers=readers, associated=associated, handle=ts)


def _properties(path: Path, ts: Any) -> dict[str, Any]:
    try:
        return ts.properties
    except Exception as err:  # tiffslide's vendor parsers raise assorted errors on odd layouts
        raise SlideOpenError(
            f"{path}: unsupported slide layout ({type(err).__name__}: {err}); convert it to a pyramidal "
            f"TIFF/OME-TIFF, or try backend='openslide'"
        ) from err


def _magic(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(4)


def _check_rgb(path: Path, series: Any) -> None:
    """Raise SlideOpenError unless ``series`` is 8-bit RGB(A) (YXS with 3-4 samples, or CYX with 3)."""
    shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    ok = dtype == np.uint8 and (
        (axes == "YXS" and shape[2] in (3, 4)) or (axes == "CYX" and shape[0] == 3)
    )
    if not ok:
        raise SlideOpenError(
            f"{path}: not an 8-bit RGB brightfield image (shape={shape}, axes={axes!r}, dtype={dtype}); "
            f"CARE needs H&E-like RGB scans — export the slide as 8-bit RGB (e.g. an RGB pyramidal TIFF)"
        )


def _decode_probe(path: Path, readers: list[TileReader], tiles: list[tuple[int, int]]) -> None:
    """Decode the first tile of level 0 and of the coarsest level: catches corrupt compressed data."""
    for level in sorted({0, len(readers) - 1}):
        th, tw = tiles[level]
        try:
            readers[level](slice(0, th), slice(0, tw))
        except Exception as err:  # codec errors come in many types (imagecodecs, zlib, PIL)
            raise SlideOpenError(
                f"{path}: corrupt image data at level {level} ({type(err).__name__}: {err}); "
                f"re-export or copy the slide again"
            ) from err


def _import_openslide() -> ModuleType | None:
    try:
        return importlib.import_module("openslide")
    except ImportError:  # openslide-python or its C library is absent
        return None


def _open_openslide(path: Path, mpp: float | None, openslide: ModuleType) -> Slide:
    """Open through OpenSlide: levels are dask arrays whose chunks call ``read_region``."""
    try:
        osr = openslide.OpenSlide(str(path))
    except Exception as err:  # OpenSlideError, OpenSlideUnsupportedFormatError, OSError
        raise SlideOpenError(f"{path}: openslide cannot open it ({err}); check the file is a complete slide") from err
    try:
        return _openslide_slide(path, mpp, openslide, osr)
    except BaseException:
        osr.close()
        raise


def _openslide_slide(path: Path, mpp: float | None, openslide: ModuleType, osr: Any) -> Slide:
    """Build the Slide over an open OpenSlide; the caller closes ``osr`` if this raises."""
    props = dict(osr.properties)
    prefix = openslide.PROPERTY_NAME_MPP_X.split(".")[0]
    found = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
    resolved = resolve_mpp(path, mpp, found, "OpenSlide mpp-x property")
    background = _background_rgb(props.get(f"{prefix}.background-color"))
    readers, native = [], []
    stat = path.stat()
    for level, (w, h) in enumerate(osr.level_dimensions):
        tile = (int(props.get(f"{prefix}.level[{level}].tile-height") or 512),
                int(props.get(f"{prefix}.level[{level}].tile-width") or 512))
        readers.append(_openslide_reader(osr, level, background))
        token = level_token("openslide", str(path.resolve()), stat.st_mtime_ns, stat.st_size, level)
        native.append(tiled_level(readers[-1], (h, w), tile, token))
    levels = add_lazy_levels(native)
    dims, downsamples = _level_geometry(levels)
    names = tuple(osr.associated_images.keys())
    info = SlideInfo(
        path=str(path), vendor=str(props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"), dimensions=dims[0],
        level_count=len(levels), level_dimensions=dims, level_downsamples=downsamples, mpp=resolved,
        objective_power=_float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
        associated_images=names,
    )
    associated = {n: (lambda n=n: np.asarray(osr.associated_images[n].convert("RGB"))) for n in names}
    return Slide(info, levels, props, readers=readers, associated=associated, handle=osr)


def _background_rgb(value: str | None) -> tuple[int, int, int]:
    """The slide's background colour from OpenSlide's hex ``background-color`` property ("RRGGBB");
    white when the property is absent or not six hex digits."""
    text = (value or "").strip().lstrip("#")
    if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return (BACKGROUND_RGB,) * 3
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def _composite_over(region: Any, background: tuple[int, int, int]) -> np.ndarray:
    """(h, w, 3) uint8 of a PIL image composited over ``background`` by its alpha. OpenSlide's Python
    ``read_region`` returns straight (not premultiplied) RGBA, so out = rgb * a + background * (1 - a),
    rounded; transparent pixels (unscanned areas, outside the slide) become the background."""
    rgba = np.asarray(region.convert("RGBA"))
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if (alpha == 255).all():  # opaque (also an empty region): nothing to blend
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / np.float32(255)
    out = rgb * a + np.asarray(background, np.float32) * (1 - a)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _openslide_reader(osr: Any, level: int, background: tuple[int, int, int]) -> TileReader:
    """Reader of one OpenSlide level, transparent pixels shown as ``background``; OpenSlide takes the
    corner in level-0 px."""
    ds = osr.level_downsamples[level]

    def read(rows: slice, cols: slice) -> np.ndarray:
        corner = (int(round(cols.start * ds)), int(round(rows.start * ds)))
        region = osr.read_region(corner, level, (cols.stop - cols.start, rows.stop - rows.start))
        return _composite_over(region, background)

    return read


def open_slide(path: str | Path, mpp: float | None = None, *, backend: str = "auto") -> Slide:
    """Open a whole-slide image lazily.

    ``mpp`` (µm/px at level 0) overrides the file's value; an unknown pixel size stays None with a
    UserWarning. ``backend``: "tiffslide", "openslide" (if installed) or "auto" (tiffslide, then
    openslide for files that are not TIFF). Raises SlideOpenError / MissingMppError with the cause.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    path = Path(path)
    if not path.exists():
        raise SlideOpenError(f"{path}: no such file; check the path (absolute: {path.absolute()})")
    if not path.is_file():
        raise SlideOpenError(f"{path}: is a directory, not a slide file; pass the slide file itself")
    openslide = _import_openslide() if backend != "tiffslide" else None
    if backend == "openslide":
        if openslide is None:
            raise SlideOpenError(
                f"{path}: backend='openslide' needs openslide; pip install 'napari-care[openslide]' "
                f"or use backend='tiffslide'"
            )
        return _open_openslide(path, mpp, openslide)
    if backend == "auto" and openslide is not None and _magic(path) not in _TIFF_MAGICS:
        return _open_openslide(path, mpp, openslide)
    return _open_tiffslide(path, mpp)
