"""Write a synthetic slide as an Aperio SVS pyramid plus its ground-truth compartment mask.

Page order follows Aperio: tiled JPEG level 0, a stripped thumbnail, tiled reduced levels
(downsample 4, 16, …), then label (LZW, subfile type 1) and macro (JPEG, subfile type 9).
Level 0 is streamed tile row by tile row (the next row renders in a worker thread while the
current one is compressed); a 1/4 copy kept in memory feeds the lower levels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from care_core._atomic import atomic_path
from care_core.synth.render import Renderer
from care_core.synth.tissue import (COMPARTMENTS, MASK_DOWNSAMPLE, STRUCTURES, make_layout, render_labels,
                                    to_compartments, to_structures)

__all__ = ["SampleSlide", "ensure_sample_slide", "structures_path", "write_sample_slide"]

_HEADER = "Aperio Image Library v12.0.15"
_MIN_SIDE_PX = 512
_MIN_LEVEL_SIDE_PX = 128  # stop adding pyramid levels once the longest side would drop below this
_THUMBNAIL_PX = 1024
WORLD_VERSION = 2  # bumped when the same arguments give other pixels (2: local structures, TIL and TLS)


@dataclass(frozen=True)
class SampleSlide:
    """A written synthetic slide and its ground truth."""

    slide_path: Path
    mask_path: Path  # uint8 labels (0 = glass, keys of `compartments`), one px per `mask_downsample` level-0 px
    mask_downsample: int
    compartments: dict[int, str]
    mpp: float  # µm/px at level 0

    def read_mask(self) -> np.ndarray:
        """The ground-truth labels, uint8 (ceil(H/16), ceil(W/16))."""
        return tifffile.imread(self.mask_path)

    @property
    def structures_path(self) -> Path:
        """uint8 local-structure ids (0 = none, keys of `care_core.synth.tissue.STRUCTURES`), grid of the mask."""
        return structures_path(self.mask_path)

    def read_structures(self) -> np.ndarray:
        """The local-structure ids, uint8, same grid as `read_mask`."""
        return tifffile.imread(self.structures_path)


def structures_path(mask_path: str | os.PathLike[str]) -> Path:
    """`<stem>_structures.tif` beside a slide's `<stem>_mask.tif`."""
    mask_path = Path(mask_path)
    return mask_path.with_name(mask_path.name.removesuffix("_mask.tif") + "_structures.tif")


def _check_args(width_px: int, height_px: int, seed: int, mpp: float, tile_px: int, jpeg_quality: int) -> None:
    """Raise ValueError naming the first bad argument."""
    for name, value in (("width_px", width_px), ("height_px", height_px)):
        if not isinstance(value, (int, np.integer)) or value < _MIN_SIDE_PX:
            raise ValueError(f"{name}={value!r} is too small: a sample slide needs at least {_MIN_SIDE_PX} px per side")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or not 0.05 <= mpp <= 10.0:
        raise ValueError(f"mpp={mpp!r} µm/px must be a finite number in [0.05, 10] (0.5 is a 20x scan)")
    if not isinstance(tile_px, (int, np.integer)) or tile_px < 64 or tile_px % 16:
        raise ValueError(f"tile_px={tile_px!r} must be a multiple of 16 and at least 64 (256 is usual)")
    if not isinstance(jpeg_quality, (int, np.integer)) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality={jpeg_quality!r} must be an integer in [1, 100]")


def _downsample4(rgb: np.ndarray) -> np.ndarray:
    """Mean of each 4x4 block of a (h, w, 3) uint8 image; trailing rows/columns that do not fill a block are dropped."""
    h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    rows = rgb[0:h:4, :w].astype(np.uint16)
    for i in (1, 2, 3):
        rows += rgb[i:h:4, :w]
    acc = rows[:, 0::4].copy()
    for i in (1, 2, 3):
        acc += rows[:, i::4]
    acc += 8
    acc >>= 4
    return acc.astype(np.uint8)


def _block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each `factor` x `factor` block (trailing partial blocks dropped)."""
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    blocks = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize to (height, width)."""
    ys = (np.arange(height) * img.shape[0] // height)
    xs = (np.arange(width) * img.shape[1] // width)
    return img[ys][:, xs]


def _label_image(seed: int) -> np.ndarray:
    """A printed slide label: white card with a seeded 2D barcode and a coloured band, (400, 400, 3) uint8."""
    rng = np.random.default_rng([seed, 505])
    img = np.full((400, 400, 3), 250, np.uint8)
    img[:60] = (60, 110, 190)
    code = rng.random((16, 16)) < 0.5
    code[0, :] = code[:, 0] = True
    code[-1, ::2] = code[::2, -1] = True
    img[90:346, 72:328] = np.where(np.kron(code, np.ones((16, 16), bool))[..., None], 20, 250)
    return img


def _macro_image(thumbnail: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Whole-glass photo: label at the left end, tissue thumbnail on the glass, (431, 1280, 3) uint8."""
    img = np.full((431, 1280, 3), 228, np.uint8)
    img[40:391, 20:371] = _resize_nearest(label, 351, 351)
    h, w = thumbnail.shape[:2]
    scale = min(380 / h, 860 / w)
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    top, left = (431 - th) // 2, 400 + (860 - tw) // 2
    img[top:top + th, left:left + tw] = _resize_nearest(thumbnail, th, tw)
    return img


def write_sample_slide(path: str | os.PathLike[str], *, width_px: int = 24000, height_px: int = 18000, seed: int = 0,
                       mpp: float = 0.5, tile_px: int = 256, jpeg_quality: int = 85) -> SampleSlide:
    """Write a seeded synthetic H&E-like Aperio SVS at `path` and its compartment mask beside it.

    The slide is `width_px` x `height_px` at `mpp` µm/px (objective power 10/mpp, so 20x at 0.5)
    with tumour, stroma, lymphocyte, fat and necrosis compartments a few mm across, and on some slides
    local structures (lymphocyte-infiltrated tumour, tertiary lymphoid aggregates). Beside it go
    `<stem>_mask.tif` (uint8 compartments at 1/16 of level 0), `<stem>_structures.tif` (structure ids on
    the same grid) and `<stem>_compartments.json` (area shares of both, written last). The same arguments always give the same pixels.
    Raises ValueError for a bad argument.
    """
    _check_args(width_px, height_px, seed, mpp, tile_px, jpeg_quality)
    width_px, height_px, seed, mpp = int(width_px), int(height_px), int(seed), float(mpp)
    slide_path = Path(path)
    if slide_path.suffix.lower() != ".svs":
        raise ValueError(f"path={str(path)!r} must end in .svs")
    slide_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path = slide_path.with_name(f"{slide_path.stem}_mask.tif")
    json_path = slide_path.with_name(f"{slide_path.stem}_compartments.json")

    layout = make_layout(width_px, height_px, mpp, seed)
    n_cols, n_rows = -(-width_px // tile_px), -(-height_px // tile_px)
    renderer = Renderer(layout, seed, n_cols * tile_px, n_rows * tile_px)
    quarter = np.empty((height_px // 4, width_px // 4, 3), np.uint8)

    def tiles() -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(renderer.rows, 0, tile_px)
            for r in range(n_rows):
                band = pending.result()
                if r + 1 < n_rows:
                    pending = pool.submit(renderer.rows, (r + 1) * tile_px, tile_px)
                valid = min(tile_px, height_px - r * tile_px)
                q0 = r * tile_px // 4
                small = _downsample4(band[:valid, :width_px, :3])
                quarter[q0:q0 + small.shape[0]] = small[: quarter.shape[0] - q0]
                for c in range(n_cols):
                    yield np.ascontiguousarray(band[:, c * tile_px:(c + 1) * tile_px, :3])

    mag = f"{10.0 / mpp:g}"
    keyvals = (f"|AppMag = {mag}|StripeWidth = {tile_px * 8}|ScanScope ID = NAPARI-CARE-SYNTH"
               f"|Filename = {slide_path.stem}|Title = synthetic H&E seed {seed}|MPP = {mpp:g}"
               f"|Left = 0.0|Top = 0.0|ImageID = {seed}")
    base = f"{_HEADER} \r\n{width_px}x{height_px} [0,0 {width_px}x{height_px}] ({tile_px}x{tile_px})"
    jpeg = {"compression": "jpeg", "compressionargs": {"level": jpeg_quality}, "photometric": "rgb", "metadata": None}

    with atomic_path(slide_path) as tmp, tifffile.TiffWriter(tmp, bigtiff=width_px * height_px * 3 > 2**31) as tif:
        tif.write(tiles(), shape=(height_px, width_px, 3), dtype=np.uint8, tile=(tile_px, tile_px),
                  description=f"{base} JPEG/RGB Q={jpeg_quality}{keyvals}", software=False, maxworkers=2, **jpeg)
        factor = max(1, -(-max(quarter.shape[:2]) // _THUMBNAIL_PX))
        thumb = _block_mean(quarter, factor) if factor > 1 else quarter
        tif.write(thumb, description=f"{_HEADER} \r\n{width_px}x{height_px} -> {thumb.shape[1]}x{thumb.shape[0]} - "
                  f"{keyvals}", rowsperstrip=16, software=False, **jpeg)
        level = quarter
        while min(level.shape[:2]) >= 1 and max(level.shape[:2]) >= _MIN_LEVEL_SIDE_PX:
            tif.write(level, tile=(tile_px, tile_px), software=False, maxworkers=2,
                      description=f"{base} -> {level.shape[1]}x{level.shape[0]} JPEG/RGB Q={jpeg_quality}{keyvals}",
                      **jpeg)
            if min(level.shape[:2]) < 4:
                break
            level = _downsample4(level)
        label = _label_image(seed)
        tif.write(label, description=f"{_HEADER}\r\nlabel {label.shape[1]}x{label.shape[0]}", subfiletype=1,
                  compression="lzw", photometric="rgb", metadata=None, software=False)
        macro = _macro_image(thumb, label)
        tif.write(macro, description=f"{_HEADER}\r\nmacro {macro.shape[1]}x{macro.shape[0]}", subfiletype=9,
                  rowsperstrip=16, software=False, **jpeg)

    g = MASK_DOWNSAMPLE
    labels = render_labels(layout, height_px, width_px, g)
    mask, structures = to_compartments(labels), to_structures(labels)
    for path, labels, names in ((mask_path, mask, {"compartments": COMPARTMENTS}),
                                (structures_path(mask_path), structures, {"structures": STRUCTURES})):
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack", metadata=None,
                             description=json.dumps({"mask_downsample": g, **names}))
    counts = np.bincount(mask.ravel(), minlength=len(COMPARTMENTS) + 1)[1:]
    total = max(int(counts.sum()), 1)
    s_counts = np.bincount(structures.ravel(), minlength=len(STRUCTURES) + 1)[1:]
    sidecar = {"slide": slide_path.name, "mask": mask_path.name, "mask_downsample": g, "mpp": mpp, "seed": seed,
               "width_px": width_px, "height_px": height_px, "world_version": WORLD_VERSION,
               "compartments": {str(k): v for k, v in COMPARTMENTS.items()},
               "tissue_fractions": {COMPARTMENTS[k]: round(float(c / total), 4) for k, c in zip(COMPARTMENTS, counts)},
               "structures": {str(k): v for k, v in STRUCTURES.items()},
               "structure_area_mm2": {STRUCTURES[k]: round(float(c) * (g * mpp / 1000.0) ** 2, 4)
                                      for k, c in zip(STRUCTURES, s_counts)},
               "structure_fractions": {STRUCTURES[k]: round(float(c / total), 4) for k, c in zip(STRUCTURES, s_counts)}}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return SampleSlide(slide_path, mask_path, g, dict(COMPARTMENTS), mpp)


def ensure_sample_slide(folder: str | os.PathLike[str], *, width_px: int = 24000, height_px: int = 18000,
                        seed: int = 0, mpp: float = 0.5) -> SampleSlide:
    """The sample slide in `folder`, written only when a finished one with these arguments is not there yet.

    A slide counts as finished when its JSON sidecar (written last) records the same size, seed, mpp and
    `WORLD_VERSION` (a slide of an older generator is written again).
    """
    slide_path = Path(folder) / f"sample_{width_px}x{height_px}_seed{seed}.svs"
    json_path = slide_path.with_name(f"{slide_path.stem}_compartments.json")
    try:
        meta = json.loads(json_path.read_text())
        done = ((meta["width_px"], meta["height_px"], meta["seed"], meta["mpp"], meta.get("world_version"))
                == (width_px, height_px, seed, mpp, WORLD_VERSION))
    except (OSError, ValueError, KeyError):
        done = False
    mask_path = slide_path.with_name(f"{slide_path.stem}_mask.tif")
    if done and slide_path.is_file() and mask_path.is_file() and structures_path(mask_path).is_file():
        return SampleSlide(slide_path, mask_path, MASK_DOWNSAMPLE, dict(COMPARTMENTS), float(mpp))
    return write_sample_slide(slide_path, width_px=width_px, height_px=height_px, seed=seed, mpp=mpp)
