"""Region search: `build_index` / `RegionIndex` / `search_index` and `care index` / `care search`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import care_core.search.index as search
from care_core._atomic import atomic_path
from care_core.cli import main
from care_core.errors import InvalidInputError
from care_core.model.encoding import HeadPrediction, SlideEncoding
from care_core.search import RegionIndex, build_index, search_index

SIDE = 512


def write_encoding(folder, name, regions, slide=None, model="m1" * 32, encoder="enc", head=None, cls=None):
    """An encoding whose region r holds two patches, at (r*SIDE, 0) and (r*SIDE, SIDE); ``regions`` are its
    regions' mean tokens (what an index searches by default), ``cls`` their g^AR (default: the same)."""
    emb = np.asarray(regions, dtype=np.float32)
    r = len(emb)
    coords = np.array([(i * SIDE, j * SIDE) for i in range(r) for j in (0, 1)], np.int64)
    preds = [] if head is None else [HeadPrediction("compartment", ("stroma", "tumour"), np.array([0.5, 0.5]), head)]
    enc = SlideEncoding(slide_embedding=np.asarray(emb.mean(0) if slide is None else slide, np.float32),
                        region_embeddings=emb if cls is None else np.asarray(cls, np.float32), region_token_means=emb, patch_region=np.repeat(np.arange(r), 2), coords=coords,
                        pi=np.full(r, 1 / r, np.float32), roi=0, patch_size_level0=SIDE,
                        meta={"model_sha256": model, "encoder": encoder}, predictions=preds)
    return enc.save_npz(folder / f"{name}_encoding.npz")


@pytest.fixture
def cohort(tmp_path):
    enc = tmp_path / "enc"
    enc.mkdir()
    write_encoding(enc, "a", [[1, 0, 0], [0, 1, 0]], slide=[1, 0, 0],
                   head=np.array([[0.9, 0.1], [0.2, 0.8]], np.float32))
    write_encoding(enc, "b", [[1, 1, 0], [0, 0, 1]], slide=[1, 1, 0])
    write_encoding(enc, "c", [[1, 0.1, 0]], slide=[0, 0, 1])
    return tmp_path, enc


def test_exact_answers_on_a_hand_made_index(cohort):
    tmp, enc = cohort
    info = build_index([enc], tmp / "index")
    assert sorted(info["slides"]) == ["a", "b", "c"] and info["embed_dim"] == 3 and info["encoder"] == "enc"
    hits = search_index(tmp / "index", slide="a", region=0, k=10)  # the query region itself is left out
    assert [(h.slide, h.region) for h in hits] == [("c", 0), ("b", 0), ("a", 1), ("b", 1)]
    np.testing.assert_allclose([h.similarity for h in hits], [1 / np.sqrt(1.01), 1 / np.sqrt(2), 0, 0], atol=1e-6)
    assert hits[0].centroid == (256.0, 512.0) and hits[0].bbox == (0, 0, 512, 1024) and hits[0].n_patches == 2
    assert hits[2].predicted == "compartment: tumour" and hits[0].predicted == ""
    assert [(h.slide, h.region) for h in search_index(tmp / "index", slide="a", region=0, k=2)] == [("c", 0), ("b", 0)]
    assert [(h.slide, h.region) for h in search_index(tmp / "index", slide="a", region=0, same_slide=True)] == [("a", 1)]
    other = search_index(tmp / "index", slide="a", region=0, same_slide=False)
    assert [(h.slide, h.region) for h in other] == [("c", 0), ("b", 0), ("b", 1)]
    slides = search_index(tmp / "index", slide="a", k=5)  # slide search, the query slide left out
    assert [(h.slide, h.region, round(h.similarity, 6)) for h in slides] == [("b", -1, round(1 / np.sqrt(2), 6)),
                                                                            ("c", -1, 0.0)]
    np.save(tmp / "q.npy", np.array([0, 0, 2], np.float32))
    assert [(h.slide, h.region, h.similarity) for h in search_index(tmp / "index", embedding=tmp / "q.npy", k=1)] == \
        [("b", 1, 1.0)]


def test_a_query_or_slide_of_another_model_is_refused(cohort):
    tmp, enc = cohort
    build_index([enc / "a_encoding.npz"], tmp / "index")
    other = tmp / "other"
    other.mkdir()
    write_encoding(other, "d", [[1, 0, 0]], model="m2" * 32)
    before = (tmp / "index" / "index.json").read_text()
    with pytest.raises(InvalidInputError) as err:
        build_index([enc / "b_encoding.npz", other], tmp / "index")
    assert str(err.value) == (f"{other / 'd_encoding.npz'} was encoded with CARE model m2m2m2m2m2m2… but the index holds "
                              "model m1m1m1m1m1m1…; encode it with the index's checkpoint, or build another index")
    assert (tmp / "index" / "index.json").read_text() == before and not (tmp / "index" / "b.npz").exists()
    with pytest.raises(InvalidInputError, match="encoded with CARE model m2m2m2m2m2m2… but the index holds"):
        search_index(tmp / "index", slide=other / "d_encoding.npz", region=0)
    write_encoding(other, "e", [[1, 0, 0]], encoder="uni")
    with pytest.raises(InvalidInputError, match="comes from patch encoder 'uni' but the index holds 'enc'"):
        search_index(tmp / "index", slide=other / "e_encoding.npz", region=0)
    np.save(tmp / "q.npy", np.zeros(4, np.float32))
    with pytest.raises(InvalidInputError, match="is a 4-d vector but the index holds 3-d embeddings"):
        search_index(tmp / "index", embedding=tmp / "q.npy")
    with pytest.raises(InvalidInputError, match="slide 'zz' is not in index"):
        search_index(tmp / "index", slide="zz", region=0)


def test_adding_slides_keeps_the_others_and_a_re_encoded_slide_replaces_its_shard(cohort):
    tmp, enc = cohort
    index = tmp / "index"
    build_index([enc / "a_encoding.npz", enc / "b_encoding.npz"], index)
    mtimes = {n: (index / f"{n}.npz").stat().st_mtime_ns for n in "ab"}
    seen = []
    build_index([enc], index, progress=lambda slide, what: seen.append((slide, what)))
    assert seen == [("a", "unchanged"), ("b", "unchanged"), ("c", "added")]
    assert {n: (index / f"{n}.npz").stat().st_mtime_ns for n in "ab"} == mtimes
    write_encoding(enc, "b", [[0, 0, 1], [0, 0, 1], [0, 1, 0]])  # b re-encoded: three regions now
    seen.clear()
    info = build_index([enc], index, progress=lambda slide, what: seen.append((slide, what)))
    assert seen == [("a", "unchanged"), ("b", "replaced"), ("c", "unchanged")]
    assert (index / "a.npz").stat().st_mtime_ns == mtimes["a"] and info["slides"]["b"]["n_regions"] == 3
    assert len(RegionIndex(index)) == 2 + 3 + 1
    assert [(h.slide, h.region) for h in search_index(index, slide="a", region=1, k=1)] == [("b", 2)]


def test_an_interrupted_build_leaves_the_finished_slides(cohort, monkeypatch):
    tmp, enc = cohort
    index = tmp / "index"
    real, calls = search._write_shard, []

    def write_then_stop(encoding, path, representation):  # Ctrl-C while the second shard is half written
        calls.append(path.name)
        if len(calls) == 2:
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half")
                raise KeyboardInterrupt
        return real(encoding, path, representation)

    monkeypatch.setattr(search, "_write_shard", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_index([enc], index)
    assert sorted(json.loads((index / "index.json").read_text())["slides"]) == ["a"]
    assert [(h.slide, h.region) for h in search_index(index, slide="a", region=0)] == [("a", 1)]
    assert sorted(p.name for p in index.iterdir()) == ["a.npz", "index.json"]  # no temp file, no lock
    monkeypatch.setattr(search, "_write_shard", real)
    build_index([enc], index)  # the next build finishes the rest
    assert sorted(p.name for p in index.iterdir()) == ["a.npz", "b.npz", "c.npz", "index.json"]


def test_inputs_that_are_not_encodings_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no encodings .* run care encode first"):
        build_index([tmp_path / "empty"], tmp_path / "index")
    with pytest.raises(InvalidInputError, match="not a region index"):
        search_index(tmp_path / "empty", slide="a")


def test_cli_index_and_search_from_feature_files(tmp_path, capsys):
    from test_encode import SMALL, write_features

    from care_core.model import CARE, save_checkpoint

    feats = tmp_path / "features"
    feats.mkdir()
    write_features(feats, "slide_a", 11, 0)
    write_features(feats, "slide_b", 12, 1)
    ckpt = save_checkpoint(CARE.from_seed(0, **SMALL).eval(), tmp_path / "care", encoder="stain-texture",
                           feature_mpp=0.5, patch_px=512)
    assert main(["index", str(feats), "--out", str(tmp_path / "index"), "--model", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "slide_a: added\nslide_b: added\n" in out and "index " in out and "2 slides" in out
    assert (tmp_path / "index" / "encodings" / "slide_a_encoding.npz").is_file()
    tensors = json.loads(ckpt.with_suffix(".json").read_text())["tensors_sha256"]
    assert json.loads((tmp_path / "index" / "index.json").read_text())["model_sha256"] == tensors  # heads' rule
    assert main(["search", str(tmp_path / "index"), "--slide", "slide_a", "--region", "0", "-k", "3",
                 "--other-slides", "--out", str(tmp_path / "hits.csv")]) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "hits.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and {r["slide"] for r in rows} == {"slide_b"}
    assert "   1  slide_b " in out.splitlines()[1]
    enc_b = tmp_path / "index" / "encodings" / "slide_b_encoding.npz"
    assert main(["search", str(tmp_path / "index"), "--slide", str(enc_b), "--out", str(tmp_path / "s.json")]) == 0
    assert [h["slide"] for h in json.loads((tmp_path / "s.json").read_text())] == ["slide_a"]
    assert main(["search", str(tmp_path / "index"), "--slide", "nope", "--region", "0"]) == 2
    assert "care search: error: slide 'nope' is not in index" in capsys.readouterr().err


def test_the_approximate_index_scanning_every_list_gives_the_exact_answers(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    for s in range(6):
        write_encoding(tmp_path, f"s{s}", rng.standard_normal((500, 16)))
    build_index([tmp_path], tmp_path / "index")
    index = RegionIndex(tmp_path / "index")
    ann = index.approximate(nlist=20, nprobe=20)
    assert ann.nlist == 20 and ann.ivf.ntotal == 3000
    for row in (0, 1234, 2999):
        query = index.regions[row]
        slide = index.slide_names[index.slide_of[row]]
        for same in (None, False):
            exact = index.search(query, k=10, slide=slide, region=int(index.region_of[row]), same_slide=same,
                                 approximate=False)
            approx = index.search(query, k=10, slide=slide, region=int(index.region_of[row]), same_slide=same,
                                  approximate=True)
            assert [(h.slide, h.region) for h in approx] == [(h.slide, h.region) for h in exact]
            np.testing.assert_allclose([h.similarity for h in approx], [h.similarity for h in exact], atol=1e-5)
    assert index.search(index.regions[0], k=10, approximate=True)[0].region == 0  # no query slide: itself first


CHILD = """
import sys, time
from pathlib import Path
import care_core.search.index as search
from care_core._atomic import atomic_path

real, done = search._write_shard, []

def write_slowly(encoding, path, representation):  # the third shard hangs half written, for the parent's SIGKILL
    if len(done) == 2:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            print("hanging", flush=True)
            time.sleep(60)
    done.append(path)
    return real(encoding, path, representation)

search._write_shard = write_slowly
search.build_index([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def test_a_build_killed_mid_shard_leaves_the_finished_slides_and_the_next_build_goes_on(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    enc = tmp_path / "enc"
    enc.mkdir()
    for name in "abcd":
        write_encoding(enc, name, np.eye(3)[:2] + ord(name))
    index = tmp_path / "index"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(enc), str(index)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "hanging\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    left = sorted(p.name for p in index.iterdir())
    assert left[0].startswith(f".c.npz.{child.pid}.") and left[0].endswith(".tmp")  # the killed write's temp file
    assert left[1:] == [".care.lock", "a.npz", "b.npz", "index.json"]
    assert sorted(json.loads((index / "index.json").read_text())["slides"]) == ["a", "b"]
    assert len(RegionIndex(index)) == 4
    seen = []
    build_index([enc], index, progress=lambda slide, what: seen.append((slide, what)))
    assert seen == [("a", "unchanged"), ("b", "unchanged"), ("c", "added"), ("d", "added")]
    assert sorted(p.name for p in index.iterdir()) == ["a.npz", "b.npz", "c.npz", "d.npz", "index.json"]


def test_the_approximate_index_holds_the_only_copy_is_saved_and_follows_the_slides(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from care_core.search import approx

    rng = np.random.default_rng(1)
    enc = tmp_path / "enc"
    enc.mkdir()
    for s in range(4):
        write_encoding(enc, f"s{s}", rng.standard_normal((600, 32)))
    build_index([enc], tmp_path / "index")
    exact = RegionIndex(tmp_path / "index", approximate=False)
    index = RegionIndex(tmp_path / "index", approximate=True)
    saved = sorted(p.name for p in (tmp_path / "index").glob("approx-*.faiss"))
    assert index.regions is None and len(index) == 2400 and len(saved) == 1
    own = 2400 * 32 * 4
    meta = index.nbytes - index._approx.nbytes
    assert index._approx.nbytes <= 1.2 * own  # the embeddings once (lists, ids, row map), not twice
    np.testing.assert_allclose(index.query_embedding("s2", 5), exact.query_embedding("s2", 5), atol=1e-6)
    query = exact.query_embedding("s1", 7)
    want = exact.search(query, k=10, slide="s1", region=7, same_slide=False)
    got = index.search(query, k=10, slide="s1", region=7, same_slide=False, approximate=False)  # every list
    assert [(h.slide, h.region) for h in got] == [(h.slide, h.region) for h in want] and meta > 0

    def no_build(*args, **kw):
        raise AssertionError("the saved index should have been loaded")

    with monkeypatch.context() as mp:  # the next load reads the saved index, no k-means
        real = approx.ApproxIndex.__init__

        def init(self, matrix, **kw):
            if matrix is not None:
                no_build()
            real(self, matrix, **kw)

        mp.setattr(approx.ApproxIndex, "__init__", init)
        again = RegionIndex(tmp_path / "index", approximate=True)
        assert [(h.slide, h.region) for h in again.search(query, k=5, slide="s1", region=7)] == \
            [(h.slide, h.region) for h in index.search(query, k=5, slide="s1", region=7)]
    write_encoding(enc, "s4", rng.standard_normal((10, 32)))  # a slide added: the saved index is stale
    build_index([enc / "s4_encoding.npz"], tmp_path / "index")
    grown = RegionIndex(tmp_path / "index", approximate=True)
    assert len(grown) == 2410 and grown._approx.ivf.ntotal == 2410
    assert [p.name for p in (tmp_path / "index").glob("approx-*.faiss")] != saved  # replaced, not added
    assert len(list((tmp_path / "index").glob("approx-*.faiss"))) == 1


def test_removing_slides_drops_their_shards_and_a_wrong_name_changes_nothing(tmp_path, capsys):
    from test_encode import SMALL, write_features

    from care_core.model import CARE, save_checkpoint

    feats = tmp_path / "features"
    feats.mkdir()
    for i, name in enumerate("pqr"):
        write_features(feats, name, 11 + i, i)
    ckpt = save_checkpoint(CARE.from_seed(0, **SMALL).eval(), tmp_path / "care", encoder="stain-texture",
                           feature_mpp=0.5, patch_px=512)
    index = tmp_path / "index"
    assert main(["index", str(feats), "--out", str(index), "--model", str(ckpt)]) == 0
    capsys.readouterr()
    before = sorted(str(p.relative_to(index)) for p in index.rglob("*") if p.is_file())
    assert main(["index", "--out", str(index), "--remove", "q", "zz"]) == 2
    assert capsys.readouterr().err.startswith("care index: error: 'zz': not in index ")
    assert sorted(str(p.relative_to(index)) for p in index.rglob("*") if p.is_file()) == before
    assert main(["index", "--out", str(index), "--remove", "q"]) == 0
    assert "q: removed" in capsys.readouterr().out
    after = sorted(str(p.relative_to(index)) for p in index.rglob("*") if p.is_file())
    assert sorted(set(before) - set(after)) == ["encodings/q_encoding.npz", "encodings/q_regions.csv",
                                                "encodings/q_regions.geojson", "encodings/q_roi.npy",
                                                "encodings/q_slide.npy", "q.npz"]
    assert RegionIndex(index).slide_names == ["p", "r"]
    with pytest.raises(SystemExit, match="give encodings or feature files to add, or --remove SLIDE"):
        main(["index", "--out", str(index)])


def test_a_build_on_a_dask_cluster_gives_the_shards_of_an_in_process_build(tmp_path):
    from test_encode import SMALL, write_features

    from care_core.model import CARE, save_checkpoint

    feats = tmp_path / "features"
    feats.mkdir()
    for i, name in enumerate(("u", "v", "w")):
        write_features(feats, name, 11 + i, i)
    care = CARE.from_seed(0, **SMALL).eval()
    ckpt = save_checkpoint(care, tmp_path / "care", encoder="stain-texture", feature_mpp=0.5, patch_px=512)
    here = build_index([feats], tmp_path / "here", model=ckpt)
    assert main(["index", str(feats), "--out", str(tmp_path / "there"), "--model", str(ckpt), "--workers", "2"]) == 0
    there = json.loads((tmp_path / "there" / "index.json").read_text())
    assert sorted(there["slides"]) == ["u", "v", "w"] and there["model_sha256"] == here["model_sha256"]
    for name in ("u", "v", "w"):
        with np.load(tmp_path / "here" / f"{name}.npz") as a, np.load(tmp_path / "there" / f"{name}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(InvalidInputError, match="a build on a cluster takes the CARE model as a checkpoint path"):
        build_index([feats], tmp_path / "other", model=care, n_workers=2)


def test_regions_are_searched_by_their_mean_tokens_or_by_g_ar_as_the_index_says(tmp_path):
    enc = tmp_path / "enc"
    enc.mkdir()
    write_encoding(enc, "a", [[1, 0], [0, 1]], cls=[[0, 1], [1, 0]])
    write_encoding(enc, "b", [[1, 0.1]], cls=[[1, 0.1]])  # like a's region 0 by tokens, a's region 1 by g^AR
    tokens = build_index([enc], tmp_path / "tokens")
    cls = build_index([enc], tmp_path / "cls", representation="cls")
    assert tokens["representation"] == "tokens" and cls["representation"] == "cls"
    assert [(h.slide, h.region) for h in search_index(tmp_path / "tokens", slide="b", region=0, k=1)] == [("a", 0)]
    assert [(h.slide, h.region) for h in search_index(tmp_path / "cls", slide="b", region=0, k=1)] == [("a", 1)]
    by_file = search_index(tmp_path / "cls", slide=enc / "b_encoding.npz", region=0, k=1)  # the encoding's g^AR
    assert [(h.slide, h.region) for h in by_file] == [("a", 1)]
    with pytest.raises(InvalidInputError, match=r"the index searches regions by 'tokens', not 'cls'; build another"):
        build_index([enc], tmp_path / "tokens", representation="cls")
    old = SlideEncoding.load_npz(enc / "a_encoding.npz")
    old.region_token_means = None  # an encoding made before they were kept
    old.save_npz(tmp_path / "old_encoding.npz")
    with pytest.raises(InvalidInputError) as err:
        build_index([tmp_path / "old_encoding.npz"], tmp_path / "tokens")
    assert str(err.value) == (f"{tmp_path / 'old_encoding.npz'}: holds no region mean tokens (encoded before they "
                              "were kept); encode it again (care encode or care predict), or use an index of "
                              "--representation cls")
    assert "old" not in json.loads((tmp_path / "tokens" / "index.json").read_text())["slides"]
    assert "old" in build_index([tmp_path / "old_encoding.npz"], tmp_path / "cls")["slides"]
