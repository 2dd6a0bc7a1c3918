"""A synthetic cohort in one call: slides with compartment masks, optional patch features, paired molecular
tables, and the cohort table Stage II reads.

Layout of `out_dir`:

    slides/sample_<W>x<H>_seed<S>.svs (+ _mask.tif, _compartments.json)   one per slide (`write_sample_slide`)
    features/<slide stem>.h5       stain-texture features (when `features=True`; else `care extract` writes them here)
    rna.h5ad, protein.csv          molecular profiles from each slide's compartments and local structures (synth.molecular)
    compartments.csv               slide, sample_id, patient, seed, the five area fractions and the TIL / TLS areas (mm²)
    labels/<task>.csv              slide labels for `care evaluate` (slide = feature-file stem, label, patient):
                                   global: dominant.csv (dominant compartment), tumour.csv (tumour share above the
                                   cohort median: high / low); local: til.csv, tls.csv (present / absent);
                                   molecular: til_signature.csv, tls_signature.csv (measured RNA signature above the
                                   cohort median: high / low); survival.csv (slide, time, event, patient)
    truth/<slide stem>.csv         per patch (with features): x, y (level-0 corner), compartment, structure (centre rule)
    annotations/<slide stem>.geojson  the compartments outlined as classified QuPath polygons (level-0 px), as a
                                   pathologist would annotate them (`care evaluate --annotations`, QuPath, napari)
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
from care_core.synth.tissue import COMPARTMENTS, STRUCTURES

__all__ = ["write_synthetic_cohort"]

SEEDS_PER_COHORT = 10_000


def _fractions(json_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The five compartment area fractions and the structure areas (mm²) recorded in a slide's `_compartments.json`."""
    meta = json.loads(json_path.read_text())
    shares, areas = meta["tissue_fractions"], meta["structure_area_mm2"]
    return (np.array([shares[COMPARTMENTS[k]] for k in sorted(COMPARTMENTS)], np.float64),
            np.array([areas[STRUCTURES[k]] for k in sorted(STRUCTURES)], np.float64))


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _survival(fractions: np.ndarray, structure_mm2: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Months to event and event flags: hazard rises with tumour and necrosis share, falls with TIL and TLS
    (exponential times, uniform censoring over 10 years)."""
    rng = np.random.default_rng([seed, 509])
    risk = 3.0 * fractions[:, 0] + 4.0 * fractions[:, 4] - 1.0 * (structure_mm2[:, 0] > 0) - 0.6 * (structure_mm2[:, 1] > 0)
    time = rng.exponential(40.0 * np.exp(-(risk - risk.mean())))
    censor = rng.uniform(12.0, 120.0, len(time))
    return np.minimum(time, censor), (time <= censor).astype(np.int64)


def _write_labels(out_dir: Path, stems: list[str], patients: list[str], fractions: np.ndarray,
                  structure_mm2: np.ndarray, signatures: dict[str, np.ndarray], seed: int) -> None:
    """labels/*.csv: global, local, molecular and survival labels of every slide (see the module docstring)."""
    names = [COMPARTMENTS[k] for k in sorted(COMPARTMENTS)]

    def high_low(v: np.ndarray) -> list[str]:
        return ["high" if x > np.median(v) else "low" for x in v]

    tasks = {"dominant": [names[i] for i in fractions.argmax(1)], "tumour": high_low(fractions[:, 0])}
    for j, name in enumerate(STRUCTURES[k] for k in sorted(STRUCTURES)):
        tasks[name.lower()] = ["present" if a > 0 else "absent" for a in structure_mm2[:, j]]
        tasks[f"{name.lower()}_signature"] = high_low(signatures[name])
    for task, labels in tasks.items():
        _write_csv(out_dir / "labels" / f"{task}.csv", ["slide", "label", "patient"], zip(stems, labels, patients))
    time, event = _survival(fractions, structure_mm2, seed)
    _write_csv(out_dir / "labels" / "survival.csv", ["slide", "time", "event", "patient"],
               ((s, f"{t:.2f}", e, p) for s, t, e, p in zip(stems, time, event, patients)))


def _write_annotations(out_dir: Path, slides: list) -> None:
    """annotations/<stem>.geojson: each slide's compartments as QuPath polygons (`synth.truth.compartment_annotations`)."""
    from care_core.regions.export import annotations_to_geojson
    from care_core.synth.truth import compartment_annotations, read_mask

    for s in slides:
        mask, ds = read_mask(s.mask_path)
        geo = annotations_to_geojson(compartment_annotations(mask, ds))
        with atomic_path(out_dir / "annotations" / f"{s.slide_path.stem}.geojson") as tmp:
            tmp.write_text(json.dumps(geo))


def _write_truth(out_dir: Path, slides: list) -> None:
    """truth/<stem>.csv: each patch's level-0 corner, compartment and structure (`synth.truth.patch_truth`)."""
    from care_core.features import load_features
    from care_core.synth.truth import patch_truth

    for s in slides:
        pf = load_features(out_dir / "features" / f"{s.slide_path.stem}.h5")
        t = patch_truth(pf.coords, pf.patch_size_level0, s.mask_path)
        _write_csv(out_dir / "truth" / f"{s.slide_path.stem}.csv", ["x", "y", "compartment", "structure"],
                   zip(pf.coords[:, 0], pf.coords[:, 1], t.compartment, t.structure))


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
    truth = [_fractions(s.slide_path.with_name(f"{stem}_compartments.json")) for s, stem in zip(slides, stems)]
    fractions, structure_mm2 = np.stack([t[0] for t in truth]), np.stack([t[1] for t in truth])
    from care_core.synth.molecular import molecular_profiles, signature_scores, write_molecular_tables

    prof = molecular_profiles(fractions, patients, structure_mm2=structure_mm2, seed=int(seed))
    write_molecular_tables(out_dir, sample_ids, prof, patients, seed=int(seed), protein_missing=protein_missing)
    say("molecular tables: rna.h5ad, protein.csv")
    names = [COMPARTMENTS[k] for k in sorted(COMPARTMENTS)]
    _write_csv(out_dir / "compartments.csv",
               ["slide", "sample_id", "patient", "seed", *names, *(f"{STRUCTURES[k]}_mm2" for k in sorted(STRUCTURES))],
               ([f"slides/{stem}.svs", sid, pid, s, *(f"{v:.4f}" for v in frac), *(f"{a:.4f}" for a in area)]
                for stem, sid, pid, s, frac, area in zip(stems, sample_ids, patients, seeds, fractions, structure_mm2)))
    _write_labels(out_dir, stems, patients, fractions, structure_mm2,
                  signature_scores(prof.rna, prof.genes, prof.signatures), int(seed))
    _write_annotations(out_dir, slides)
    if features:
        _write_truth(out_dir, slides)
    say("labels and ground truth: labels/, annotations/" + (", truth/" if features else ""))
    table = out_dir / "cohort.csv"
    _write_csv(table, ["slide", "features", "sample_id", "patient"],
               ([f"slides/{stem}.svs", f"features/{stem}.h5", sid, pid] for stem, sid, pid in zip(stems, sample_ids, patients)))
    say(f"cohort table: {table}")
    return table
