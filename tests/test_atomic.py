"""The atomic-write helper: normal permissions, hidden temp names, nothing left behind on failure."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from care_core._atomic import atomic_path
from care_core.features import PatchFeatures
from care_core.model import SlideEncoding
from care_core.regions import write_region_csv


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _small_encoding() -> SlideEncoding:
    grid = np.array([[0, 0], [1, 0], [0, 1]])
    return SlideEncoding(
        slide_embedding=np.arange(4, dtype=np.float32),
        region_embeddings=np.eye(2, 4, dtype=np.float32),
        patch_region=np.array([0, 0, 1]),
        region_subregion=np.array([0, 0]),
        pi=np.array([0.75, 0.25], np.float32),
        alpha=np.array([2 / 3, 1 / 3], np.float32),
        beta=np.array([0.5, 0.5], np.float32),
        roi=0,
        coords=grid * 512,
        grid=grid,
        patch_size_level0=512,
        mpp=0.5,
        patch_px=256,
    )


def test_temp_is_a_hidden_sibling_and_replaces_path(tmp_path, umask_022):
    target = tmp_path / "new" / "out.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and target.parent.is_dir()
        assert re.fullmatch(rf"\.out\.csv\.{os.getpid()}\.[0-9a-f]{{16}}\.tmp", tmp.name), tmp.name
        assert not tmp.exists()
        tmp.write_text("a,b\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.csv"]


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_mode_follows_umask_even_for_a_0600_temp(tmp_path, umask, expected):
    target = tmp_path / "out.bin"
    old = os.umask(umask)
    try:
        with atomic_path(target) as tmp:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))  # what tempfile.mkstemp would give
            assert _mode(tmp) == 0o600
        assert os.umask(umask) == umask  # reading the umask left it as it was
    finally:
        os.umask(old)
    assert _mode(target) == expected


def test_failure_keeps_old_file_and_removes_temp(tmp_path, umask_022):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full halfway"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("disk full halfway")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_body_that_writes_nothing_fails_and_leaves_no_file(tmp_path, umask_022):
    target = tmp_path / "out.npy"
    with pytest.raises(FileNotFoundError, match=r"\.out\.npy\..*\.tmp"):
        with atomic_path(target):
            pass
    assert list(tmp_path.iterdir()) == []


def test_real_writers_give_0644_under_umask_022(tmp_path, umask_022):
    rng = np.random.default_rng(0)
    pf = PatchFeatures(rng.normal(size=(3, 4)).astype(np.float32), np.array([[0, 0], [512, 0], [0, 512]]),
                       patch_size_level0=512, mpp=0.5, patch_px=256, encoder="stain-texture")
    enc = _small_encoding()
    written = [
        pf.save(tmp_path / "slide.h5"),
        write_region_csv(enc, tmp_path / "slide_regions.csv"),
        enc.save_npz(tmp_path / "slide_encoding.npz"),
    ]
    assert {p.name: oct(_mode(p)) for p in written} == {
        "slide.h5": "0o644", "slide_regions.csv": "0o644", "slide_encoding.npz": "0o644"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    np.testing.assert_array_equal(SlideEncoding.load_npz(written[2]).patch_region, [0, 0, 1])


def test_interrupt_during_the_renames_is_held_until_the_set_is_complete(tmp_path):
    import signal

    from care_core._atomic import atomic_paths

    paths = [tmp_path / f"s_{i}.txt" for i in range(5)]
    real_replace, seen = os.replace, []

    def replace_then_interrupt(src, dst):  # a real SIGINT arrives right after the first rename
        real_replace(src, dst)
        seen.append(dst)
        if len(seen) == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "replace", replace_then_interrupt)
            with atomic_paths(paths) as tmps:
                for tmp in tmps:
                    tmp.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # all five, no temp


def test_each_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Durable: after a power loss a renamed file must not come back empty, so its bytes reach the disk first."""
    from care_core._atomic import atomic_paths

    log, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    paths = [tmp_path / "a.txt", tmp_path / "sub" / "b.txt"]
    with atomic_paths(paths) as tmps:
        for tmp in tmps:
            tmp.write_text("x")
    kinds = [(k, re.sub(r"\.\d+\.[0-9a-f]{16}\.tmp$", ".tmp", Path(p).name) if k == "fsync" else Path(p).name)
             for k, p in log]
    assert kinds == [("fsync", ".a.txt.tmp"), ("fsync", ".b.txt.tmp"), ("rename", "a.txt"), ("rename", "b.txt"),
                     ("fsync", tmp_path.name), ("fsync", "sub")]


# ------------------------------------------------------------------------------------------ folder lock
def test_folder_lock_refuses_a_second_holder_and_is_gone_afterwards(tmp_path):
    from care_core._atomic import LOCK_NAME, folder_lock
    from care_core.errors import OutputError

    with folder_lock(tmp_path / "run") as lock:
        assert lock == tmp_path / "run" / LOCK_NAME and lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(OutputError) as err:
            with folder_lock(tmp_path / "run"):
                pass
        assert str(err.value) == (f"output folder {tmp_path / 'run'} is in use by another run (process {os.getpid()} "
                                  "on this machine); wait for it to end or choose another output folder")
    assert not lock.exists()
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "run"):
        raise RuntimeError("the run failed")
    assert os.listdir(tmp_path / "run") == []


def test_a_lock_left_by_a_killed_process_is_taken_over_one_of_another_machine_is_not(tmp_path):
    import subprocess
    import sys

    from care_core._atomic import _HOST, LOCK_NAME, folder_lock
    from care_core.errors import OutputError

    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.kill()
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid} {_HOST}\n")
    with folder_lock(tmp_path) as lock:
        assert lock.read_text() == f"{os.getpid()} {_HOST}\n"
    assert not lock.exists()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid} 0123abcd\n")
    with pytest.raises(OutputError, match=rf"process {dead.pid} on another machine\); wait .* delete "
                                          rf"{re.escape(str(tmp_path / LOCK_NAME))} if that run is gone"):
        with folder_lock(tmp_path):
            pass
    assert (tmp_path / LOCK_NAME).read_text() == f"{dead.pid} 0123abcd\n"  # left for its owner
