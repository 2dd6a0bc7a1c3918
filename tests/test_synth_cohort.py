"""Synthetic molecular data: profiles follow the compartment composition (learnable: a ridge regression from
the true fractions predicts RNA far above chance, also on a cohort of other seeds), patients share their
confounders, and a cohort written in one call (slides, features, tables) loads for Stage II."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from care_core.synth.molecular import PROTEIN_MARKERS, molecular_profiles
from care_core.synth.tissue import COMPARTMENTS


def _composition(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(5, 0.8), size=n), [f"p{i // 2}" for i in range(n)]


def _cv_r2(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over columns of the 5-fold cross-validated R² of a ridge regression from x to y."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict

    pred = cross_val_predict(Ridge(alpha=1e-2), x, y, cv=KFold(5, shuffle=True, random_state=0))
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def test_ridge_from_true_fractions_predicts_rna_and_protein_far_above_chance():
    frac, patients = _composition(200, seed=1)
    prof = molecular_profiles(frac, patients, seed=1)
    rna = np.log1p(prof.rna)
    shuffled = frac[np.random.default_rng(2).permutation(len(frac))]
    assert _cv_r2(frac, rna) > 0.4  # mean over all 1,292 genes, most of them outside every program set
    assert _cv_r2(shuffled, rna) < 0.02  # chance: the same regression on fractions of other samples
    assert _cv_r2(frac, prof.protein) > 0.55
    assert _cv_r2(shuffled, prof.protein) < 0.02


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
    assert len(data.protein) + data.skipped_protein == 3 and len(data.proteins) == 32
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
