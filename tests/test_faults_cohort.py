"""Faults 1, 3, 6 and 10 in cohort extraction: old outputs that cannot be read are redone (and said so), a full
disk is one line that stops the run, a bad --out fails before any work, and one slide runs in-process."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from slide_factory import tissue_image, write_svs

import care_core.features.cohort as cohort
from care_core.errors import OutputError
from care_core.features import PatchFeatures, load_features, run_cohort

KW = dict(encoder="stain-texture", batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    return [write_svs(root / f"s{i}.svs", tissue_image(1024, 1024, [(512, 512, 300)], seed=i), mpp=0.5, n_levels=3)
            for i in range(3)]


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a dask cluster is started."""
    def refuse(*a, **k):
        raise AssertionError("a cluster was started for one slide")

    monkeypatch.setattr(cohort, "_run_tasks", refuse)


def _truncated(path):
    PatchFeatures(np.ones((400, 230), np.float32), np.stack([np.arange(400) * 512, np.zeros(400)], 1), 512, mpp=0.5,
                  patch_px=512, encoder="stain-texture").save(path)
    path.write_bytes(path.read_bytes()[:200_000])


@pytest.mark.parametrize(("make", "said"), [
    (lambda p: p.write_bytes(b""), r"redone: the old s0\.h5 was unreadable \(Unable to (synchronously )?open file"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100), r"redone: the old s0\.h5 was unreadable"),
    (lambda p: h5py.File(p, "w").create_dataset("coords", data=np.zeros((3, 2), np.int64)).file.close(),
     r"redone: the old s0\.h5 lacked \['features'\]"),
    (_truncated, r"redone: the old s0\.h5 was unreadable \(.*\)"),
])
def test_unreadable_or_incomplete_output_is_redone_never_trusted(slides, tmp_path, no_cluster, make, said):
    out = tmp_path / "out"
    out.mkdir()
    make(out / "s0.h5")
    (row,) = run_cohort(slides[:1], out, **KW).rows
    assert row.status == "done" and row.error == "" and re.match(said, row.note), row.note
    assert load_features(out / "s0.h5").n_patches == row.n_patches > 0
    assert sorted(p.name for p in out.iterdir()) == ["s0.h5"]
    assert "redone: the old s0.h5" in cohort.format_summary(cohort.CohortSummary([row], out, "stain-texture"))


def test_one_slide_on_a_full_disk_is_one_line_in_process(slides, small_disk, no_cluster):
    (small_disk / "filler").write_bytes(b"x" * 1_030_000)  # leaves ~18 kB of 1 MiB
    (row,) = run_cohort(slides[:1], small_disk, **KW).rows
    assert row.status == "failed"
    assert re.fullmatch(rf"OutputError: disk full: {small_disk} has [\d.]+ kB \(\d+ bytes\) free but writing "
                        rf"{small_disk / 's0.h5'} needs about [\d.]+ kB \(\d+ bytes\); free space there or choose another "
                        r"output folder \(nothing was left half-written\)", row.error), row.error
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_full_disk_stops_the_cohort_with_no_retry_storm(slides, small_disk):
    (small_disk / "filler").write_bytes(b"x" * 1_030_000)
    summary = run_cohort(slides, small_disk, n_workers=1, **KW)
    first, *rest = summary.rows
    assert first.status == "failed" and first.error.startswith("OutputError: disk full: ")
    for row in rest:  # not retried on other workers, not KilledWorker: stopped after the first full-disk failure
        assert row.status == "failed" and (row.error.startswith("OutputError: disk full")
                                           or row.error == "not run: the output disk is full (see s0.svs)"), row.error
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_bad_output_folder_fails_before_any_work(slides, tmp_path, no_cluster):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"sits under .*afile, which is a file"):
        run_cohort(slides[:1], afile / "out", **KW)
    assert afile.read_text() == "x"


def test_bad_output_folder_read_only(slides, readonly_dir, no_cluster):
    with pytest.raises(OutputError, match=r"cannot write in output folder .* \(Read-only file system\)"):
        run_cohort(slides[:1], readonly_dir, **KW)
