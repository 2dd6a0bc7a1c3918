"""`care evaluate` / `care predict` against hostile split files, names and metrics: refused with one line
before anything is written, or written so that a reader gets back what went in."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from care_core.cli import main
from care_core.errors import InvalidInputError
from care_core.evaluate import evaluate, load_splits, read_labels
from care_core.features import PatchFeatures
from care_core.model import CARE, save_checkpoint

SMALL = dict(input_dim=8, embed_dim=16, heads=2, spf_dim=8, k=4)
ODD_A, ODD_B = 'tumour, "grade 2"', "normal"  # class names a naive CSV writer shifts


def _slide(i: int) -> str:
    return f's{i:02d},"x"' if i == 3 else f"s{i:02d}"  # one slide name with a comma and quotes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 slides of 6 x 5 patches (8-d), two per patient; class A slides carry +3 on feature 0."""
    tmp = tmp_path_factory.mktemp("hostile")
    feats = tmp / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    cols, rows_ = np.meshgrid(np.arange(6), np.arange(5))
    coords = np.stack([cols.ravel(), rows_.ravel()], 1) * 512
    rows = []
    for i in range(12):
        label = ODD_A if (i // 2) % 2 else ODD_B
        f = rng.standard_normal((len(coords), 8)).astype(np.float32) + (3.0 if label == ODD_A else 0.0) * np.eye(8)[0]
        PatchFeatures(f, coords, 512, mpp=0.5, patch_px=512, encoder="stain-texture").save(feats / f"{_slide(i)}.h5")
        rows.append([_slide(i), label, f"p{i // 2}"])
    with open(tmp / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["slide", "label", "patient"], *rows])
    return tmp, feats


def _split_folder(tmp_path, folds: list[tuple[list[str], list[str]]]):
    folder = tmp_path / "splits"
    folder.mkdir()
    for k, (train, test) in enumerate(folds):
        n = max(len(train), len(test))
        with open(folder / f"splits_{k}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "train", "val", "test"])
            for j in range(n):
                w.writerow([j, train[j] if j < len(train) else "", "", test[j] if j < len(test) else ""])
    return folder


def _evaluate_cli(cohort, tmp_path, splits, capsys) -> str:
    tmp, feats = cohort
    out = tmp_path / "out"
    code = main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--input", "mean",
                 "--no-val", "--splits", str(splits), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err  # refused before the output folder was made
    assert len(err.strip().splitlines()) == 1
    return err


def test_patient_in_train_and_test_is_refused_naming_the_patient(cohort, tmp_path, capsys):
    slides = [_slide(i) for i in range(12)]
    # patient p1 = slides 2 and 3: slide 2 trains, slide 3 tests
    splits = _split_folder(tmp_path, [([s for s in slides if s != slides[3]], [slides[3]])])
    err = _evaluate_cli(cohort, tmp_path, splits, capsys)
    assert "splits_0.csv': patient 'p1' has slides in more than one part ('s02' in train, 's03,\"x\"' in test)" in err
    assert "move the patient's slides into one part" in err


def test_labelled_slide_in_no_split_is_refused(cohort, tmp_path, capsys):
    slides = [_slide(i) for i in range(12)]
    splits = _split_folder(tmp_path, [(slides[:8], slides[8:11])])  # s11 in no part
    err = _evaluate_cli(cohort, tmp_path, splits, capsys)
    assert "puts 1 labelled slide(s) ['s11'] in none of train, val and test; add them to the split or drop them" in err


def test_slide_listed_twice_is_refused(cohort, tmp_path, capsys):
    slides = [_slide(i) for i in range(12)]
    splits = _split_folder(tmp_path, [(slides[:10] + [slides[0]], slides[10:])])
    err = _evaluate_cli(cohort, tmp_path, splits, capsys)
    assert "splits_0.csv' lists slide(s) ['s00'] more than once in train; keep one row per slide" in err


def test_good_split_file_still_loads(cohort, tmp_path):
    tmp, _ = cohort
    slides = [_slide(i) for i in range(12)]
    folds = load_splits(_split_folder(tmp_path, [(slides[:8], slides[8:])]), read_labels(tmp / "labels.csv"))
    assert folds[0].test == tuple(slides[8:])


def test_read_labels_finds_duplicates_among_many_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("slide,label\n" + "".join(f"s{i},{'AB'[i % 2]}\n" for i in range(20_000)) + "s17,A\ns5,B\n")
    with pytest.raises(InvalidInputError, match=r"lists slide\(s\) \['s17', 's5'\] more than once"):
        read_labels(path)


def test_prediction_csvs_quote_names_with_commas_and_quotes(cohort, tmp_path):
    pd = pytest.importorskip("pandas")
    tmp, feats = cohort
    result = evaluate(tmp / "labels.csv", [feats], protocol="lr", input="mean", n_folds=3, val=False,
                      out_dir=tmp_path / "ev")
    df = pd.read_csv(tmp_path / "ev" / "test_predictions.csv", dtype={"sample": str, "truth": str})
    assert list(df.columns) == ["sample", "fold", "truth", f"p({ODD_B})", f"p({ODD_A})"]
    assert sorted(df["sample"]) == sorted(_slide(i) for i in range(12))
    row = df[df["sample"] == _slide(3)].iloc[0]
    assert row["truth"] == ODD_A and 0.0 <= row[f"p({ODD_A})"] <= 1.0
    assert result["classes"] == [ODD_B, ODD_A]
    model = CARE.from_seed(0, **SMALL).eval()
    ckpt = save_checkpoint(model, tmp_path / "care", encoder="stain-texture")
    head = tmp_path / "ev" / "heads" / "labels_lr_mean_fold0"
    assert main(["predict", str(feats / f"{_slide(3)}.h5"), str(feats / "s04.h5"), "--model", str(ckpt),
                 "--head", str(head), "--out", str(tmp_path / "pr")]) == 0
    df = pd.read_csv(tmp_path / "pr" / "slide_predictions.csv", dtype=str)
    name = "labels_lr_mean_fold0"
    assert list(df.columns) == ["slide", f"{name} class", f"{name} p({ODD_B})", f"{name} p({ODD_A})"]
    assert df["slide"].tolist() == sorted([_slide(3), "s04"]) and set(df[f"{name} class"]) <= {ODD_A, ODD_B}


def test_results_md_keeps_the_fold_count_of_a_nan_metric(cohort, tmp_path):
    tmp, feats = cohort
    slides = [_slide(i) for i in range(12)]
    # fold 1 tests only class normal (patients p0, p2): its AUROC and balanced accuracy are undefined
    folds = [(slides[:8], slides[8:]), (slides[2:4] + slides[6:], slides[:2] + slides[4:6])]
    with pytest.warns(Warning, match="undefined"):
        evaluate(tmp / "labels.csv", [feats], protocol="lr", input="mean", val=False, out_dir=tmp_path / "ev",
                 splits=_split_folder(tmp_path, folds))
    text = (tmp_path / "ev" / "results.md").read_text()
    assert "2 folds)" in text.splitlines()[0]
    assert "| lr / mean | 100.0 (1 of 2 folds) | 100.0 (1 of 2 folds) |" in text, text
