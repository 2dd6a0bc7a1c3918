"""Fault 1 and 6: a really full disk and unusable output folders give one OutputError line, nothing half-written."""

from __future__ import annotations

import re

import numpy as np
import pytest

from care_core._atomic import atomic_paths, check_output_dir
from care_core.errors import OutputError
from care_core.features import PatchFeatures, load_features


def _features(n: int, dim: int = 256) -> PatchFeatures:
    coords = np.stack([np.arange(n) % 40, np.arange(n) // 40], 1) * 256
    return PatchFeatures(np.ones((n, dim), np.float32), coords, 256, mpp=0.5, patch_px=256, encoder="e",
                         slide_path="s.svs")


@pytest.mark.parametrize("precheck", [True, False])  # refused up front / the write itself hits a real ENOSPC
def test_h5_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, precheck, monkeypatch):
    import care_core.features.store as store

    if not precheck:  # as when another process fills the disk between the check and the write
        monkeypatch.setattr(store, "check_free_space", lambda *a: None)
    (small_disk / "old.h5").write_bytes(b"x" * 100_000)  # the disk is partly used
    with pytest.raises(OutputError) as info:
        _features(1500).save(small_disk / "s.h5")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"disk full: {small_disk} has ")
    assert re.search(rf"writing {re.escape(str(small_disk / 's.h5'))} needs about [\d.]+ [kM]B \(\d+ bytes\)", msg)
    assert sorted(p.name for p in small_disk.iterdir()) == ["old.h5"]


def test_enospc_during_a_write_names_disk_and_bytes(small_disk):
    a, b = small_disk / "a.bin", small_disk / "b.bin"
    with pytest.raises(OutputError, match=r"disk full: .* writing .*a\.bin needs about 2\.0 MB \(2097152 bytes\)"):
        with atomic_paths([a, b], size_hint=2 << 20) as (ta, tb):
            ta.write_bytes(b"1" * 1000)
            tb.write_bytes(b"2" * (2 << 20))  # more than the disk holds: a real ENOSPC
    assert list(small_disk.iterdir()) == []


def test_small_file_still_fits_after_a_refusal(small_disk):
    with pytest.raises(OutputError):
        _features(1500).save(small_disk / "big.h5")
    back = load_features(_features(50).save(small_disk / "small.h5"))
    assert back.n_patches == 50 and sorted(p.name for p in small_disk.iterdir()) == ["small.h5"]


def test_output_folder_that_is_a_file_or_under_one(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=rf"^output folder {re.escape(str(afile))} is a file, not a folder; choose"):
        check_output_dir(afile)
    with pytest.raises(OutputError, match=rf"output folder {re.escape(str(afile / 'sub'))} sits under {re.escape(str(afile))}, which is a file"):
        check_output_dir(afile / "sub")
    with pytest.raises(OutputError, match="sits under"):  # the writers say the same, and leave no temp behind
        _features(4).save(afile / "sub" / "s.h5")
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_read_only_output_folder(readonly_dir):
    with pytest.raises(OutputError, match=rf"^cannot write in output folder {re.escape(str(readonly_dir))} \(Read-only file system\)"):
        check_output_dir(readonly_dir)
    with pytest.raises(OutputError, match=r"cannot create output folder .*sub \(Read-only file system\)"):
        check_output_dir(readonly_dir / "sub")
