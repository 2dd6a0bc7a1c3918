"""What the window's Find similar uses from the library: a search inside one encoding, the shard's patches and
slide file, and thumbnails with the region's outline."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.errors import InvalidInputError
from care_core.model.encoding import SlideEncoding
from care_core.search import RegionIndex, build_index
from care_core.search.query import search_encoding
from care_core.search.thumbs import OUTLINE_RGB, region_thumbnail
from care_core.wsi import open_slide


def _encoding(regions, slide_path=""):
    emb = np.asarray(regions, np.float32)
    r = len(emb)
    coords = np.array([(i * 512, j * 512) for i in range(r) for j in (0, 1)], np.int64)
    return SlideEncoding(slide_embedding=emb.mean(0), region_embeddings=emb[::-1].copy(), region_token_means=emb,
                         patch_region=np.repeat(np.arange(r), 2),
                         coords=coords, pi=np.full(r, 1 / r, np.float32), roi=0, patch_size_level0=512,
                         meta={"model_sha256": "m" * 64, "encoder": "enc", "slide_path": slide_path})


def test_search_inside_one_encoding_ranks_by_cosine_of_mean_tokens_and_leaves_the_query_out():
    enc = _encoding([[1, 0, 0], [3, 0.3, 0], [0, 1, 0], [1, 1, 0]])  # by g^AR: [2, 1, 3]
    hits = search_encoding(enc, 0, k=10, slide="s")
    assert [h.region for h in hits] == [1, 3, 2]
    np.testing.assert_allclose([h.similarity for h in hits], [3 / np.sqrt(9.09), 1 / np.sqrt(2), 0], atol=1e-6)
    assert hits[0].slide == "s" and hits[0].bbox == (512, 0, 1024, 1024) and hits[0].centroid == (768.0, 512.0)
    assert [h.region for h in search_encoding(enc, 0, k=1)] == [1]
    with pytest.raises(InvalidInputError, match=r"region 4 is not one of the slide's 4 regions \(0..3\)"):
        search_encoding(enc, 4)


def test_a_shard_keeps_each_region_s_patches_and_the_absolute_slide_file(tmp_path, monkeypatch):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.svs").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    _encoding([[1, 0], [0, 1]], slide_path="slides/a.svs").save_npz(tmp_path / "a_encoding.npz")
    _encoding([[1, 1]], slide_path="elsewhere/b.svs").save_npz(tmp_path / "b_encoding.npz")
    build_index([tmp_path / "a_encoding.npz", tmp_path / "b_encoding.npz"], tmp_path / "index")
    monkeypatch.chdir("/")
    index = RegionIndex(tmp_path / "index")
    assert index.slide_path("a") == tmp_path / "slides" / "a.svs"  # recorded absolute: found from anywhere
    assert index.slide_path("b") is None  # not here
    xy, side = index.region_patches("a", 1)
    assert side == 512 and xy.tolist() == [[512, 0], [512, 512]]


def test_thumbnail_outlines_exactly_the_region_s_patches(small_sample):
    with open_slide(small_sample.slide_path) as slide:
        thumb = region_thumbnail(slide, (512, 512, 1024, 1024), np.array([[512, 512]]), 512, size=100)
    assert thumb.shape == (100, 100, 3) and thumb.dtype == np.uint8
    outline = (thumb == OUTLINE_RGB).all(axis=2)
    # the box squared and widened 15 % each way: 6.656 level-0 px per thumbnail px from x = y = 435.2, so the
    # pixel centres inside the patch [512, 1024) are 12..87; the outline is their 2-px inner border
    expected = np.zeros((100, 100), bool)
    expected[12:88, 12:88] = True
    expected[14:86, 14:86] = False
    assert (outline == expected).all()
    with open_slide(small_sample.slide_path) as slide:  # a region as large as the slide reads a coarse level
        whole = region_thumbnail(slide, (0, 0, *slide.dimensions), size=64)
    assert whole.shape == (64, 64, 3) and not (whole == OUTLINE_RGB).all(axis=2).any()
