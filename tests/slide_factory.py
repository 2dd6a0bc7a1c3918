"""Small test slides written with tifffile: Aperio-like SVS, generic pyramidal TIFF, OME-TIFF with
SubIFDs, a flat tiled TIFF, non-RGB TIFFs, and helpers that truncate or corrupt a file.

Every writer takes an (H, W, 3) uint8 image for level 0 and builds each lower level by taking every
second pixel of the level above (``image[::2, ::2]``), so expected pixels are easy to compute.
Use ``compression="zlib"`` where a test compares pixels (JPEG is lossy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    "pattern_image",
    "tissue_image",
    "pyramid",
    "write_svs",
    "write_generic_pyramid",
    "write_ome_pyramid",
    "write_flat",
    "write_grey_float",
    "write_uint16_multichannel",
    "truncate",
    "corrupt_tiles",
    "write_not_a_tiff",
]

_CM_PER_UM = 1e-4


def pattern_image(width_px: int, height_px: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 image with unique-ish, position-dependent pixels (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height_px, 0:width_px]
    img = np.empty((height_px, width_px, 3), np.uint8)
    img[..., 0] = (xx * 7 + yy * 3) % 256
    img[..., 1] = (yy * 5 + xx) % 256
    img[..., 2] = rng.integers(0, 256, (height_px, width_px), dtype=np.uint8)
    return img


def tissue_image(
    width_px: int,
    height_px: int,
    discs: list[tuple[int, int, int]],
    holes: list[tuple[int, int, int]] = (),
    seed: int = 0,
) -> np.ndarray:
    """White glass (RGB ~ 240) with pink H&E-like discs ``(cx, cy, r)`` minus white ``holes``, in px."""
    rng = np.random.default_rng(seed)
    img = np.full((height_px, width_px, 3), 240, np.uint8)
    img += rng.integers(0, 6, img.shape, dtype=np.uint8)
    yy, xx = np.mgrid[0:height_px, 0:width_px]
    inside = np.zeros((height_px, width_px), bool)
    for cx, cy, r in discs:
        inside |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    for cx, cy, r in holes:
        inside &= ~((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
    n = int(inside.sum())
    pink = np.stack(
        [rng.integers(170, 200, n), rng.integers(70, 110, n), rng.integers(140, 180, n)], axis=1
    )
    img[inside] = pink.astype(np.uint8)
    return img


def pyramid(image: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """Level 0 and ``n_levels - 1`` lower levels, each every second pixel of the one above."""
    levels = [image]
    for _ in range(n_levels - 1):
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    return levels


def _tiled_kw(compression: str, tile_px: int) -> dict:
    kw: dict = {"tile": (tile_px, tile_px), "photometric": "rgb", "compression": compression}
    if compression == "jpeg":
        kw["compressionargs"] = {"level": 90}
    return kw


def write_svs(
    path: str | Path,
    image: np.ndarray,
    *,
    n_levels: int = 3,
    mpp: float | None = 0.499,
    app_mag: float = 20,
    tile_px: int = 256,
    compression: str = "jpeg",
    associated: bool = True,
) -> Path:
    """Aperio-like SVS: level 0, a stripped thumbnail, the lower levels, then label and macro."""
    path = Path(path)
    h, w = image.shape[:2]
    fields = [f"AppMag = {app_mag:g}"] + ([f"MPP = {mpp:.4f}"] if mpp is not None else [])
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile_px}x{tile_px}) JPEG/RGB Q=90"
    levels = pyramid(image, n_levels)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], description="|".join([head, *fields]), metadata=None, **_tiled_kw(compression, tile_px))
        if associated:
            thumb = np.ascontiguousarray(image[::16, ::16])
            tw.write(thumb, description=f"{head} -> {thumb.shape[1]}x{thumb.shape[0]}", metadata=None,
                     photometric="rgb")
        for lvl in levels[1:]:
            desc = f"{head} -> {lvl.shape[1]}x{lvl.shape[0]}"
            tw.write(lvl, description=desc, metadata=None, **_tiled_kw(compression, tile_px))
        if associated:
            label = np.full((60, 80, 3), 200, np.uint8)
            macro = np.full((50, 150, 3), 100, np.uint8)
            tw.write(label, subfiletype=1, description="Aperio Image Library v12.0.15\r\nlabel 80x60",
                     metadata=None, photometric="rgb")
            tw.write(macro, subfiletype=9, description="Aperio Image Library v12.0.15\r\nmacro 150x50",
                     metadata=None, photometric="rgb")
    return path


def write_generic_pyramid(
    path: str | Path,
    image: np.ndarray,
    *,
    n_levels: int = 3,
    mpp: float | None = 0.25,
    tile_px: int = 256,
    compression: str = "zlib",
    bigtiff: bool = False,
) -> Path:
    """Generic pyramidal TIFF: reduced levels as SubIFDs of level 0, mpp as XResolution in px/cm."""
    path = Path(path)
    levels = pyramid(image, n_levels)
    kw = _tiled_kw(compression, tile_px)
    res = {}
    if mpp is not None:
        res = {"resolution": (1 / (mpp * _CM_PER_UM), 1 / (mpp * _CM_PER_UM)), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        tw.write(levels[0], subifds=n_levels - 1, metadata=None, **res, **kw)
        for i, lvl in enumerate(levels[1:], start=1):
            lres = {}
            if mpp is not None:
                px_per_cm = 1 / (mpp * 2**i * _CM_PER_UM)
                lres = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(lvl, subfiletype=1, metadata=None, **lres, **kw)
    return path


def write_ome_pyramid(
    path: str | Path,
    image: np.ndarray,
    *,
    n_levels: int = 3,
    mpp: float | None = 0.5,
    mpp_unit: str = "µm",
    tile_px: int = 256,
    compression: str = "zlib",
) -> Path:
    """OME-TIFF pyramid: level 0 with OME-XML (PhysicalSizeX) and the lower levels as SubIFDs."""
    path = Path(path)
    levels = pyramid(image, n_levels)
    kw = _tiled_kw(compression, tile_px)
    meta: dict = {"axes": "YXS"}
    if mpp is not None:
        meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit=mpp_unit, PhysicalSizeYUnit=mpp_unit)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], subifds=n_levels - 1, metadata=meta, **kw)
        for lvl in levels[1:]:
            tw.write(lvl, subfiletype=1, metadata=None, **kw)
    return path


def write_flat(
    path: str | Path,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    tile_px: int = 256,
    compression: str = "zlib",
) -> Path:
    """Single-level tiled TIFF (no pyramid); mpp as XResolution in px/cm."""
    path = Path(path)
    res = {}
    if mpp is not None:
        res = {"resolution": (1 / (mpp * _CM_PER_UM), 1 / (mpp * _CM_PER_UM)), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, metadata=None, **res, **_tiled_kw(compression, tile_px))
    return path


def write_grey_float(path: str | Path, width_px: int = 512, height_px: int = 384) -> Path:
    """Single-channel float32 tiled TIFF (e.g. a fluorescence or probability map)."""
    path = Path(path)
    data = np.linspace(0, 1, width_px * height_px, dtype=np.float32).reshape(height_px, width_px)
    tifffile.imwrite(path, data, tile=(256, 256), metadata=None, compression="zlib")
    return path


def write_uint16_multichannel(path: str | Path, width_px: int = 512, height_px: int = 384, channels: int = 4) -> Path:
    """16-bit multi-channel (CYX) tiled TIFF, as a multiplexed fluorescence scan would be."""
    path = Path(path)
    data = np.arange(channels * height_px * width_px, dtype=np.uint16).reshape(channels, height_px, width_px)
    tifffile.imwrite(path, data, tile=(256, 256), metadata=None, photometric="minisblack", compression="zlib")
    return path


def truncate(path: str | Path, fraction: float = 0.6) -> Path:
    """Cut the file to ``fraction`` of its size, as an interrupted copy would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def corrupt_tiles(path: str | Path) -> Path:
    """Overwrite the compressed bytes of every tile of level 0 with garbage (header and tags intact)."""
    path = Path(path)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for offset, count in spans:
        raw[offset : offset + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    return path


def write_not_a_tiff(path: str | Path) -> Path:
    """A PNG-signature file with a slide-like extension."""
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return path
