"""Shared fixtures: small synthetic slides and the real CONCH sample from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONCH_SAMPLE = SHARED_DATA / "care_sample_conch_v15_19579.npy"


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
