"""A synthetic cohort in one call: slides with compartment masks, optional patch features, paired molecular
tables, and the cohort table Stage II reads.

Layout of `out_dir`:

    slides/sample_<W>x<H>_seed<S>.svs (+ _mask.tif, _compartments.json)   one per slide (`write_sample_slide`)
    features/<slide stem>.h5       stain-texture features (when `features=True`; else `care extract` writes them here)
    rna.h5ad, protein.csv          molecular profiles from each slide's compartment fractions (synth.molecular)
    compartments.csv               slide, sample_id, patient, seed and the five area fractions (ground truth)
    cohort.csv                     slide, features, sample_id, patient (paths relative to out_dir), written last

Slide i of cohort `seed` has slide seed `seed * 10000 + i`, so cohorts of different seeds never share a slide
(held-out slides come from another cohort seed). Two consecutive slides belong to one patient by default.
A rerun skips the slides and feature files that are already finished.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.synth.svs import ensure_sample_slide
from care_core.synth.tissue import COMPARTMENTS

__all__ = ["write_synthetic_cohort"]

SEEDS_PER_COHORT = 10_000


def _fractions(json_path: Path) -> np.ndarray:
    """The five compartment area fractions recorded in a slide's `_compartments.json`."""
    shares = json.loads(json_path.read_text())["tissue_fractions"]
    return np.array([shares[COMPARTMENTS[k]] for k in sorted(COMPARTMENTS)], np.float64)


def write_synthetic_cohort(out_dir: str | os.PathLike, n_slides: int, *, seed: int = 0, width_px: int = 6000,
                           height_px: int = 4800, mpp: float = 0.5, features: bool = True,
                           slides_per_patient: int = 2, protein_missing: float = 0.2, workers: int = 2,
                           progress: Callable[[str], None] | None = None) -> Path:
    """Write a cohort of `n_slides` synthetic slides with paired RNA / protein profiles; returns `cohort.csv`.

    Slides are `width_px` x `height_px` at `mpp` µm/px (default 3 x 2.4 mm: about 90 patches of 256 µm
    each; 3000 x 2400 px holds only about 24). features: extract stain-texture features for every slide
    (`workers` dask processes). progress: called with a one-line message after each step.
    """
    if not isinstance(n_slides, (int, np.integer)) or n_slides < 1:
        raise ValueError(f"n_slides={n_slides!r} must be a positive integer")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if n_slides > SEEDS_PER_COHORT:
        raise ValueError(f"n_slides={n_slides} exceeds {SEEDS_PER_COHORT}, the slide seeds of one cohort seed")
    if slides_per_patient < 1:
        raise ValueError(f"slides_per_patient={slides_per_patient!r} must be at least 1")
    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    slides = []
    for i in range(int(n_slides)):
        slide = ensure_sample_slide(out_dir / "slides", width_px=width_px, height_px=height_px,
                                    seed=int(seed) * SEEDS_PER_COHORT + i, mpp=mpp)
        slides.append(slide)
        say(f"slide {i + 1}/{n_slides}: {slide.slide_path.name}")
    if features:
        from care_core.features import run_cohort

        summary = run_cohort([s.slide_path for s in slides], out_dir / "features", encoder="stain-texture",
                             n_workers=workers, progress=lambda row: say(f"features {Path(row.slide).name}: {row.status}"))
        failed = [r for r in summary.rows if r.status == "failed"]
        if failed:
            raise RuntimeError(f"feature extraction failed for {failed[0].slide}: {failed[0].error}")

    stems = [s.slide_path.stem for s in slides]
    sample_ids = [f"S{seed}-{i:04d}" for i in range(len(slides))]
    patients = [f"P{seed}-{i // slides_per_patient:04d}" for i in range(len(slides))]
    seeds = [int(seed) * SEEDS_PER_COHORT + i for i in range(len(slides))]
    fractions = np.stack([_fractions(s.slide_path.with_name(f"{stem}_compartments.json"))
                          for s, stem in zip(slides, stems)])
    from care_core.synth.molecular import write_molecular_tables

    write_molecular_tables(out_dir, sample_ids, fractions, patients, seed=int(seed), protein_missing=protein_missing)
    say("molecular tables: rna.h5ad, protein.csv")
    names = [COMPARTMENTS[k] for k in sorted(COMPARTMENTS)]
    with atomic_path(out_dir / "compartments.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "sample_id", "patient", "seed", *names])
        for stem, sid, pid, s, frac in zip(stems, sample_ids, patients, seeds, fractions):
            writer.writerow([f"slides/{stem}.svs", sid, pid, s, *(f"{v:.4f}" for v in frac)])
    table = out_dir / "cohort.csv"
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "features", "sample_id", "patient"])
        for stem, sid, pid in zip(stems, sample_ids, patients):
            writer.writerow([f"slides/{stem}.svs", f"features/{stem}.h5", sid, pid])
    say(f"cohort table: {table}")
    return table
