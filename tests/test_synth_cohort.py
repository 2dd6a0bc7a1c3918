"""Synthetic molecular data: profiles follow the compartment composition and the local structures (learnable: a
ridge regression from the true drivers predicts RNA far above chance, also on a cohort of other seeds; each
signature is mostly explained by its drivers on real layouts), patients share their confounders, and a cohort
written in one call (slides, features, tables, labels, per-patch truth) loads for Stage II and `care evaluate`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from care_core.synth.molecular import PROTEIN_MARKERS, molecular_profiles
from care_core.synth.tissue import COMPARTMENTS


def _composition(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(5, 0.8), size=n), [f"p{i // 2}" for i in range(n)]


def _structures(n: int, seed: int) -> np.ndarray:
    """[n, 2] TIL / TLS areas (mm²): each present on about half of the slides."""
    rng = np.random.default_rng([seed, 9])
    return (rng.random((n, 2)) < 0.5) * rng.uniform(0.3, 1.6, (n, 2))


def _cv_r2(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over columns of the 5-fold cross-validated R² of a ridge regression from x to y."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict

    pred = cross_val_predict(Ridge(alpha=1e-2), x, y, cv=KFold(5, shuffle=True, random_state=0))
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def test_ridge_from_true_drivers_predicts_rna_and_protein_far_above_chance():
    frac, patients = _composition(200, seed=1)
    area = _structures(200, seed=1)
    prof = molecular_profiles(frac, patients, structure_mm2=area, seed=1)
    rna = np.log1p(prof.rna)
    drivers = np.column_stack([frac, area])
    shuffled = drivers[np.random.default_rng(2).permutation(len(frac))]
    assert _cv_r2(drivers, rna) > 0.4  # mean over all 1,292 genes, most of them outside every program set
    assert _cv_r2(shuffled, rna) < 0.02  # chance: the same regression on drivers of other samples
    assert _cv_r2(drivers, prof.protein) > 0.55
    assert _cv_r2(shuffled, prof.protein) < 0.02
    assert _cv_r2(frac, prof.protein[:, -13:-3]) < 0.05  # structure proteins: composition alone tells nothing


def test_each_signature_is_mostly_explained_by_its_drivers_on_real_layouts():
    """Fresh layouts of the slide generator (no pixels): compartment fractions and structure areas from the
    masks; the per-signature R² of a linear fit on those drivers is >= 0.5, and structure signatures need the
    structures (composition alone explains little of them)."""
    from care_core.synth.molecular import signature_scores
    from care_core.synth.tissue import make_layout, render_labels, to_compartments, to_structures

    frac, area = [], []
    for seed in range(30):
        lab = render_labels(make_layout(6000, 4800, 0.5, 90_000 + seed), 4800, 6000, 16)
        c = np.bincount(to_compartments(lab).ravel(), minlength=6)[1:]
        frac.append(c / c.sum())
        area.append(np.bincount(to_structures(lab).ravel(), minlength=3)[1:] * (16 * 0.5 / 1000) ** 2)
    frac, area = np.array(frac), np.array(area)
    assert 0.2 < (area > 0).mean(0).min() and (area > 0).mean(0).max() < 0.9  # present on some slides only
    prof = molecular_profiles(frac, [f"p{i // 2}" for i in range(30)], structure_mm2=area, seed=11)
    scores = signature_scores(prof.rna, prof.genes, prof.signatures)
    assert set(scores) == {"tumour", "stroma", "lymphocytes", "fat", "necrosis", "TIL", "TLS"}

    def r2(x, y):
        x = np.column_stack([x, np.ones(len(x))])
        resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - resid.var() / y.var()

    for name, y in scores.items():
        assert r2(np.column_stack([frac, area]), y) >= 0.5, name
    for j, name in enumerate(("TIL", "TLS")):
        assert r2(frac, scores[name]) < 0.5 < r2(area[:, j:j + 1], scores[name]), name


def test_held_out_seeds_share_the_biology():
    from sklearn.linear_model import Ridge

    train_f, train_p = _composition(150, seed=3)
    test_f, test_p = _composition(60, seed=4)
    train = np.log1p(molecular_profiles(train_f, train_p, seed=0).rna)
    model = Ridge(alpha=1e-2).fit(train_f, train)

    def r2(program_seed: int) -> float:
        test = np.log1p(molecular_profiles(test_f, test_p, seed=1, program_seed=program_seed).rna)
        return float(np.mean(1 - ((test - model.predict(test_f)) ** 2).sum(0) / ((test - test.mean(0)) ** 2).sum(0)))

    assert r2(program_seed=0) > 0.3  # another cohort seed: new patients and noise, the same programs
    assert r2(program_seed=1) < 0.0  # other programs: what was learnt does not transfer


def test_programs_follow_the_hallmark_sets_of_each_compartment():
    pure = np.eye(5)  # one sample per compartment, in COMPARTMENTS order
    prof = molecular_profiles(pure, [f"p{i}" for i in range(5)], seed=0, noise_sigma=0.0, confounder_sd=0.0)
    rna = dict(zip(prof.genes, np.log(prof.rna.T)))
    tumour, stroma, lymph, fat, necrosis = range(5)
    assert rna["MKI67"][tumour] > rna["MKI67"][fat] + 1.0  # E2F / G2M targets
    assert rna["ADIPOQ"][fat] > rna["ADIPOQ"][tumour] + 1.0
    assert rna["COL1A1"][stroma] > rna["COL1A1"][lymph] + 1.0  # EMT
    assert rna["CD3E"][lymph] > rna["CD3E"][necrosis] + 1.0  # allograft rejection
    assert rna["CA9"][necrosis] > rna["CA9"][stroma] + 1.0  # hypoxia
    prot = dict(zip(prof.proteins, prof.protein.T))
    for c, name in enumerate(COMPARTMENTS[k] for k in sorted(COMPARTMENTS)):
        top10 = {prof.proteins[j] for j in np.argsort(-prof.protein[c])[:10]}
        assert set(PROTEIN_MARKERS[name]) <= top10 | {"EGFR", "CDH1"}  # a pure sample's markers lead
        assert prot[PROTEIN_MARKERS[name][0]][c] == prof.protein[:, prof.proteins.index(PROTEIN_MARKERS[name][0])].max()


def test_samples_of_one_patient_share_confounders_and_seeds_reproduce():
    frac = np.tile([[0.4, 0.3, 0.1, 0.1, 0.1]], (40, 1))
    patients = [f"p{i // 2}" for i in range(40)]  # pairs of identical composition
    prof = molecular_profiles(frac, patients, seed=5)
    log = np.log(prof.rna)
    same = np.mean([np.mean((log[i] - log[i + 1]) ** 2) for i in range(0, 40, 2)])
    other = np.mean([np.mean((log[i] - log[i + 2]) ** 2) for i in range(0, 38, 2)])
    assert same < 0.7 * other
    again = molecular_profiles(frac, patients, seed=5)
    np.testing.assert_array_equal(again.rna, prof.rna)
    assert not np.array_equal(molecular_profiles(frac, patients, seed=6).rna, prof.rna)
    with pytest.raises(ValueError, match=r"\[N=40, 5\]"):
        molecular_profiles(frac[:, :4], patients)


def test_cohort_in_one_call_loads_for_stage_two(tmp_path):
    from care_core.features import load_features
    from care_core.synth.cohort import write_synthetic_cohort
    from care_core.train.expression import load_molecular

    messages: list[str] = []
    table = write_synthetic_cohort(tmp_path / "c", 3, seed=2, width_px=1024, height_px=768, features=True,
                                   workers=1, protein_missing=0.5, slides_per_patient=2, progress=messages.append)
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sample_id"] for r in rows] == ["S2-0000", "S2-0001", "S2-0002"]
    assert [r["patient"] for r in rows] == ["P2-0000", "P2-0000", "P2-0001"]
    assert rows[0]["slide"] == "slides/sample_1024x768_seed20000.svs"
    data = load_molecular(table, rna=table.with_name("rna.h5ad"), protein=table.with_name("protein.csv"))
    assert len(data.rna) == 3 and data.skipped_rna == 0 and not data.missing_genes
    assert len(data.protein) + data.skipped_protein == 3 and len(data.proteins) == 42  # 29 markers + 10 structure + 3 housekeeping
    for r in data.rows:
        feats = load_features(r.features)
        assert feats.encoder == "stain-texture" and feats.n_patches > 0
    with open(table.with_name("compartments.csv"), newline="") as fh:
        truth = list(csv.DictReader(fh))
    from care_core.synth import SampleSlide

    mask = SampleSlide(tmp_path / "c" / truth[1]["slide"], tmp_path / "c" / truth[1]["slide"].replace(".svs", "_mask.tif"),
                       16, dict(COMPARTMENTS), 0.5).read_mask()
    counts = np.bincount(mask.ravel(), minlength=6)[1:]
    np.testing.assert_allclose([float(truth[1][COMPARTMENTS[k]]) for k in sorted(COMPARTMENTS)],
                               counts / counts.sum(), atol=1e-4)
    assert any(m.startswith("features") for m in messages)
    from care_core.evaluate.labels import read_labels
    from care_core.features import load_features as load
    from care_core.synth.truth import patch_truth

    for task in ("dominant", "tumour", "til", "tls", "til_signature", "tls_signature", "survival"):
        with open(tmp_path / "c" / "labels" / f"{task}.csv", newline="") as fh:
            labels = list(csv.DictReader(fh))
        assert [r["slide"] for r in labels] == [Path(r["features"]).stem for r in rows]
        assert [r["patient"] for r in labels] == [r["patient"] for r in rows]
        assert {r.get("label") for r in labels} <= {"present", "absent", "high", "low", None, *COMPARTMENTS.values()}
    survival = read_labels(tmp_path / "c" / "labels" / "survival.csv")
    assert survival.kind == "survival" and (survival.time > 0).all()
    pf = load(tmp_path / "c" / rows[0]["features"])
    with open(tmp_path / "c" / "truth" / f"{Path(rows[0]['features']).stem}.csv", newline="") as fh:
        patch_rows = list(csv.DictReader(fh))
    t = patch_truth(pf.coords, pf.patch_size_level0, slide_file_mask := tmp_path / "c" / rows[0]["slide"].replace(".svs", "_mask.tif"))
    assert [int(r["compartment"]) for r in patch_rows] == t.compartment.tolist() and slide_file_mask.is_file()
    assert [[int(r["x"]), int(r["y"])] for r in patch_rows] == pf.coords.tolist()
    from care_core.evaluate.region_targets import patch_labels_from_polygons
    from care_core.model import SlideEncoding
    from care_core.regions import read_annotations

    outlines = read_annotations(tmp_path / "c" / "annotations" / f"{Path(rows[0]['features']).stem}.geojson")
    assert {a.classification for a in outlines} <= set(COMPARTMENTS.values())
    probe = SlideEncoding(np.zeros(1, np.float32), coords=pf.coords, patch_size_level0=pf.patch_size_level0)
    drawn = patch_labels_from_polygons(probe, outlines)
    tissue = t.compartment > 0
    agree = np.mean([d == COMPARTMENTS[int(c)] for d, c in zip(drawn[tissue], t.compartment[tissue])])
    assert agree >= 0.95  # the outlines name the compartment under almost every patch centre
    slide_file = tmp_path / "c" / rows[0]["slide"]
    before = slide_file.stat().st_mtime_ns
    write_synthetic_cohort(tmp_path / "c", 3, seed=2, width_px=1024, height_px=768, features=True, workers=1,
                           protein_missing=0.5)
    assert slide_file.stat().st_mtime_ns == before  # a rerun skips finished slides
    assert not list((tmp_path / "c").rglob(".*.tmp"))


def test_care_synth_cohort_cli(tmp_path, capsys):
    from care_core.cli import main

    assert main(["synth", str(tmp_path / "cli"), "--cohort", "2", "--width-px", "1024", "--height-px", "768",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "cohort " in out and (tmp_path / "cli" / "rna.h5ad").is_file()
    with open(tmp_path / "cli" / "cohort.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["features"] for r in rows] == ["features/sample_1024x768_seed30000.h5",
                                             "features/sample_1024x768_seed30001.h5"]  # where care extract puts them
    with pytest.raises(SystemExit, match="--features needs --cohort"):
        main(["synth", str(tmp_path / "x.svs"), "--features"])
