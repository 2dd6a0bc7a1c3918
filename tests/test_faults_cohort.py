"""Faults 1, 3, 6 and 10 in cohort extraction: old outputs that cannot be read are redone (and said so), a full
disk is one line that stops the run, a bad --out fails before any work, and one slide runs in-process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from pathlib import Path

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
    assert sorted(p.name for p in out.iterdir()) == ["extract_summary.csv", "s0.h5"]
    assert "redone: the old s0.h5" in cohort.format_summary(cohort.CohortSummary([row], out, "stain-texture"))


def test_one_slide_on_a_full_disk_is_one_line_in_process(slides, small_disk, no_cluster):
    (small_disk / "filler").write_bytes(b"x" * 1_030_000)  # leaves ~18 kB of 1 MiB
    (row,) = run_cohort(slides[:1], small_disk, **KW).rows
    assert row.status == "failed"
    assert re.fullmatch(rf"OutputError: disk full: {small_disk} has [\d.]+ kB \(\d+ bytes\) free but writing "
                        rf"{small_disk / 's0.h5'} needs about [\d.]+ kB \(\d+ bytes\); free space there or choose another "
                        r"output folder \(nothing was left half-written\)", row.error), row.error
    assert sorted(p.name for p in small_disk.iterdir()) == ["extract_summary.csv", "filler"]  # no .h5, no temp


def test_full_disk_stops_the_cohort_with_no_retry_storm(slides, small_disk):
    (small_disk / "filler").write_bytes(b"x" * 1_030_000)
    summary = run_cohort(slides, small_disk, n_workers=1, **KW)
    first, *rest = summary.rows
    assert first.status == "failed" and first.error.startswith("OutputError: disk full: ")
    for row in rest:  # not retried on other workers, not KilledWorker: stopped after the first full-disk failure
        assert row.status == "failed" and (row.error.startswith("OutputError: disk full")
                                           or row.error == "not run: the output disk is full (see s0.svs)"), row.error
    assert sorted(p.name for p in small_disk.iterdir()) == ["extract_summary.csv", "filler"]  # no .h5, no temp


def test_bad_output_folder_fails_before_any_work(slides, tmp_path, no_cluster):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"sits under .*afile, which is a file"):
        run_cohort(slides[:1], afile / "out", **KW)
    assert afile.read_text() == "x"


def test_bad_output_folder_read_only(slides, readonly_dir, no_cluster):
    with pytest.raises(OutputError, match=r"cannot write in output folder .* \(Read-only file system\)"):
        run_cohort(slides[:1], readonly_dir, **KW)


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, started by any of its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _handles_sigint(pid: int) -> bool:
    """False while `pid` ignores SIGINT (as during the cluster start)."""
    ignored = next(line for line in open(f"/proc/{pid}/status") if line.startswith("SigIgn:"))
    return not int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1))


@pytest.mark.slow  # a real 2-worker cluster: ~20 s on 2 busy cores
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc to find the worker processes")
def test_ctrl_c_on_a_cluster_run_is_one_line_and_leaves_no_temp_or_worker(tmp_path):
    slides = [write_svs(tmp_path / f"c{i}.svs", tissue_image(3072, 3072, [(1536, 1536, 1400)], seed=i), mpp=0.5,
                        n_levels=3) for i in range(3)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from care_core.cli import main; sys.exit(main())", "extract",
           *map(str, slides), "--out", str(out), "--workers", "2"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None and not (_children(child.pid) and _handles_sigint(child.pid)):
        time.sleep(0.1)  # the cluster is up: workers exist and the parent takes Ctrl-C again
    workers = _children(child.pid)
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = child.communicate(timeout=120)
    assert workers and child.returncode == 130, err
    assert err.strip().splitlines()[-1] == "care extract: interrupted; partial outputs removed (finished ones are kept)"
    assert "Traceback" not in err and "Error" not in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    for h5 in out.glob("*.h5"):  # whatever finished is complete
        assert load_features(h5).n_patches > 0
    table = (out / "extract_summary.csv").read_text().splitlines()
    assert len(table) == 4 and "not run: the run was interrupted" in table[-1] or (out / "c2.h5").exists()
    time.sleep(1.0)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and "zombie" not in open(f"/proc/{w}/status").read()]


@pytest.mark.parametrize(("kw", "said"), [
    (dict(target_mpp=0.0), "target_mpp=0.0 must be a positive number of µm/px"),
    (dict(target_mpp=float("nan")), "target_mpp=nan must be a positive number of µm/px"),
    (dict(patch_px=-5), "patch_px=-5 must be a positive integer"),
    (dict(mpp_override=float("inf")), "mpp_override=inf must be a positive number of µm/px or None"),
    (dict(min_tissue=1.5), r"min_tissue=1.5 must be a fraction in \[0, 1\]"),
    (dict(n_workers=0), "n_workers=0 must be a positive integer"),
    (dict(batch_size=2.5), "batch_size=2.5 must be a positive integer"),
])
def test_bad_numbers_fail_before_any_work(slides, tmp_path, no_cluster, kw, said):
    from care_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=f"^{said}$"):
        run_cohort(slides[:1], tmp_path / "out", **{**KW, **kw})
    assert not (tmp_path / "out").exists()


def test_finished_file_from_other_weights_is_not_taken_as_finished(slides, tmp_path, no_cluster):
    import hashlib

    out, weights = tmp_path / "out", tmp_path / "w.bin"
    weights.write_bytes(b"new weights")
    old = PatchFeatures(np.ones((2, 230), np.float32), [[0, 0], [512, 0]], 512, mpp=0.5, patch_px=512,
                        encoder="stain-texture", weights_sha256=hashlib.sha256(b"old weights").hexdigest())
    old.save(out / "s0.h5")
    (row,) = run_cohort(slides[:1], out, weights=weights, **KW).rows
    assert row.status == "failed" and re.fullmatch(
        rf"{re.escape(str(out / 's0.h5'))} was made with other 'stain-texture' weights \(sha256 [0-9a-f]{{12}}…, not "
        r"[0-9a-f]{12}… of --weights\); write to another --out folder or delete it", row.error), row.error
    old.weights_sha256 = hashlib.sha256(b"new weights").hexdigest()
    old.save(out / "s0.h5")
    assert run_cohort(slides[:1], out, weights=weights, **KW).rows[0].status == "skipped"
