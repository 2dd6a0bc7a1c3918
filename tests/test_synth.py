"""Synthetic sample slide: Aperio layout, determinism, ground-truth mask and stain colours per compartment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import tiffslide
from skimage.color import rgb2hed

from care_core.synth import COMPARTMENTS, SampleSlide, write_sample_slide

W, H = 2048, 1536


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SampleSlide:
    return write_sample_slide(tmp_path_factory.mktemp("a") / "sample.svs", width_px=W, height_px=H, seed=0)


@pytest.fixture(scope="module")
def pixels(slide: SampleSlide) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 RGB and the mask upsampled to level 0."""
    with tifffile.TiffFile(slide.slide_path) as tif:
        rgb = tif.pages[0].asarray()
    mask = tifffile.imread(slide.mask_path)
    full = np.repeat(np.repeat(mask, 16, axis=0), 16, axis=1)[:H, :W]
    return rgb, full


def test_returns_paths_and_metadata(slide: SampleSlide) -> None:
    assert slide.slide_path.name == "sample.svs" and slide.slide_path.is_file()
    assert slide.mask_path.name == "sample_mask.tif"
    assert slide.mask_downsample == 16 and slide.mpp == 0.5
    assert slide.compartments == {1: "tumour", 2: "stroma", 3: "lymphocytes", 4: "fat", 5: "necrosis"}
    sidecar = json.loads(slide.slide_path.with_name("sample_compartments.json").read_text())
    assert sidecar["compartments"] == {str(k): v for k, v in COMPARTMENTS.items()}
    assert sidecar["mask_downsample"] == 16 and sidecar["seed"] == 0
    mask = tifffile.imread(slide.mask_path)
    tumour_share = np.sum(mask == 1) / np.sum(mask > 0)
    assert sidecar["tissue_fractions"]["tumour"] == pytest.approx(tumour_share, abs=1e-4)
    assert sum(sidecar["tissue_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
    assert not list(slide.slide_path.parent.glob(".*tmp"))


def test_tiffslide_reads_aperio_pyramid(slide: SampleSlide) -> None:
    with tiffslide.TiffSlide(slide.slide_path) as ts:
        assert ts.properties["tiffslide.vendor"] == "aperio"
        assert ts.properties["tiffslide.mpp-x"] == 0.5 and ts.properties["tiffslide.mpp-y"] == 0.5
        assert ts.properties["tiffslide.objective-power"] == 20
        assert ts.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
        assert ts.level_downsamples == (1.0, 4.0, 16.0)
        assert set(ts.associated_images) == {"thumbnail", "label", "macro"}
        assert ts.associated_images["thumbnail"].size == (512, 384)
        assert ts.associated_images["macro"].size == (1280, 431)
        region = np.asarray(ts.read_region((1000, 700), 0, (300, 200)))
        assert region.shape == (200, 300, 3)


def test_level0_is_tiled_jpeg_with_aperio_description(slide: SampleSlide) -> None:
    with tifffile.TiffFile(slide.slide_path) as tif:
        first = tif.pages[0]
        assert first.is_tiled and (first.tilewidth, first.tilelength) == (256, 256)
        assert first.compression == tifffile.COMPRESSION.JPEG
        assert first.description.startswith("Aperio Image Library")
        assert "|AppMag = 20|" in first.description and "|MPP = 0.5|" in first.description
        assert not tif.pages[1].is_tiled  # thumbnail strip page
        assert [p.subfiletype for p in tif.pages[-2:]] == [1, 9]  # label, macro


def test_lower_levels_are_block_means_of_level0(slide: SampleSlide, pixels: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, _ = pixels
    with tifffile.TiffFile(slide.slide_path) as tif:
        level1 = tif.pages[2].asarray().astype(float)
    assert level1.shape == (384, 512, 3)
    coarse1 = level1.reshape(96, 4, 128, 4, 3).mean(axis=(1, 3))
    coarse0 = rgb.reshape(96, 16, 128, 16, 3).mean(axis=(1, 3))
    assert np.abs(coarse1 - coarse0).mean() < 1.5  # two JPEG passes apart


def test_same_seed_same_bytes_other_seed_other_pixels(slide: SampleSlide, tmp_path) -> None:
    again = write_sample_slide(tmp_path / "sample.svs", width_px=W, height_px=H, seed=0)
    assert again.slide_path.read_bytes() == slide.slide_path.read_bytes()
    assert again.mask_path.read_bytes() == slide.mask_path.read_bytes()
    other = write_sample_slide(tmp_path / "other.svs", width_px=W, height_px=H, seed=1)
    a = tifffile.imread(slide.slide_path, key=0)
    b = tifffile.imread(other.slide_path, key=0)
    assert a.shape == b.shape and np.mean(a != b) > 0.5
    assert not np.array_equal(tifffile.imread(slide.mask_path), tifffile.imread(other.mask_path))


def test_mask_shape_and_compartment_shares(slide: SampleSlide) -> None:
    mask = tifffile.imread(slide.mask_path)
    assert mask.dtype == np.uint8 and mask.shape == (math.ceil(H / 16), math.ceil(W / 16))
    counts = np.bincount(mask.ravel(), minlength=6)
    assert counts.size == 6  # no label beyond necrosis
    tissue = counts[1:].sum()
    assert 0.3 < tissue / mask.size < 0.95
    for label in COMPARTMENTS:
        assert counts[label] / tissue > 0.03, (COMPARTMENTS[label], counts)


def test_colours_follow_the_stains(pixels: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, mask = pixels
    hed_h = rgb2hed(rgb)[..., 0]
    mean = {}
    for label, name in {0: "glass", **COMPARTMENTS}.items():
        inside = mask == label
        mean[name] = (rgb[inside].mean(axis=0), hed_h[inside].mean())
    glass, tumour, stroma = mean["glass"][0], mean["tumour"][0], mean["stroma"][0]
    assert glass.min() > 225
    assert tumour.sum() < stroma.sum()  # darker
    assert tumour[2] / tumour[0] > stroma[2] / stroma[0]  # bluer
    assert mean["fat"][0].sum() == max(m[0].sum() for n, m in mean.items() if n != "glass")
    assert mean["lymphocytes"][0].sum() < stroma.sum()
    for name in ("tumour", "lymphocytes"):
        assert mean[name][1] > mean["stroma"][1] + 0.01, (name, mean[name][1], mean["stroma"][1])


def test_odd_size_and_other_mpp(tmp_path) -> None:
    out = write_sample_slide(tmp_path / "odd.svs", width_px=1000, height_px=600, seed=3, mpp=0.25)
    with tiffslide.TiffSlide(out.slide_path) as ts:
        assert ts.dimensions == (1000, 600)
        assert ts.level_dimensions == ((1000, 600), (250, 150))
        assert ts.properties["tiffslide.mpp-x"] == 0.25
        assert ts.properties["tiffslide.objective-power"] == 40
    assert tifffile.imread(out.mask_path).shape == (38, 63)
    assert out.mpp == 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width_px": 100}, "width_px=100"),
        ({"height_px": 511}, "height_px=511"),
        ({"mpp": 0.0}, "mpp=0.0"),
        ({"mpp": -0.5}, "mpp=-0.5"),
        ({"mpp": float("nan")}, "mpp=nan"),
        ({"seed": -1}, "seed=-1"),
        ({"tile_px": 250}, "tile_px=250"),
        ({"jpeg_quality": 0}, "jpeg_quality=0"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        write_sample_slide(tmp_path / "bad.svs", **kwargs)
    assert not list(tmp_path.iterdir())


def test_path_must_be_svs(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.svs"):
        write_sample_slide(tmp_path / "bad.tif", width_px=512, height_px=512)


def test_ensure_sample_slide_writes_once_and_rewrites_half_written(tmp_path) -> None:
    from care_core.synth import ensure_sample_slide

    first = ensure_sample_slide(tmp_path, width_px=1024, height_px=768, seed=3)
    stamp = first.slide_path.stat().st_mtime_ns
    again = ensure_sample_slide(tmp_path, width_px=1024, height_px=768, seed=3)
    assert again == first and again.slide_path.stat().st_mtime_ns == stamp
    assert again.read_mask().shape == (48, 64)
    # a run that died before the sidecar was written leaves no "finished" slide: it is written again
    first.slide_path.with_name(f"{first.slide_path.stem}_compartments.json").unlink()
    redone = ensure_sample_slide(tmp_path, width_px=1024, height_px=768, seed=3)
    assert redone.slide_path == first.slide_path and redone.slide_path.stat().st_mtime_ns != stamp
