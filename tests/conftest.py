"""Shared fixtures: small synthetic slides and the real CONCH sample from ../shared/data."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONCH_SAMPLE = SHARED_DATA / "care_sample_conch_v15_19579.npy"


def pytest_configure(config):
    """A suite started in the background of a non-interactive shell (``make test &``) inherits Ctrl-C ignored,
    and so would every child it starts; the interrupt tests send a real SIGINT, so give it back its default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory):
    """A small synthetic H&E SVS (3072 x 2048 px at 0.5 µm/px) with its ground-truth mask."""
    from care_core.synth import write_sample_slide

    out = tmp_path_factory.mktemp("synth") / "small.svs"
    return write_sample_slide(out, width_px=3072, height_px=2048, seed=7)


@pytest.fixture(scope="session")
def conch_sample_path() -> Path:
    """The real CONCH v1.5 features of one public slide (CARE authors' .npy); skipped when absent."""
    if not CONCH_SAMPLE.is_file():
        pytest.skip(f"real CONCH sample not found at ../shared/data/{CONCH_SAMPLE.name}")
    return CONCH_SAMPLE


def _tmpfs(folder: Path, options: str):
    """Mount a tmpfs at `folder` and yield it, unmounting afterwards; skip (with the reason) where mounting is refused."""
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command to create a size-limited filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {(done.stderr or done.stdout).strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), for full-disk faults; skipped where it cannot be mounted."""
    yield from _tmpfs(tmp_path / "disk", "size=1m")


@pytest.fixture
def readonly_dir(tmp_path):
    """A real read-only filesystem (tmpfs mounted ro; root ignores permission bits); skipped where it cannot be mounted."""
    yield from _tmpfs(tmp_path / "ro", "size=1m,ro")
