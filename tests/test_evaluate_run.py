"""End to end: `care evaluate` on a small labelled cohort of feature files, then `care predict` with its head."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from shapely.geometry import box

from care_core.cli import main
from care_core.errors import CareError, HeadError, InvalidInputError, OutputError
from care_core.evaluate import evaluate, load_head, predict_paths
from care_core.features import PatchFeatures
from care_core.model import CARE, SlideEncoding, save_checkpoint

SMALL = dict(input_dim=8, embed_dim=16, heads=2, spf_dim=8, k=4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """20 slides of 10 x 8 patches (8-d); class B slides carry +2 on feature 0 in their left half."""
    tmp = tmp_path_factory.mktemp("cohort")
    feats = tmp / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    rows, surv = [], []
    for i in range(20):
        cols, rr = np.meshgrid(np.arange(10), np.arange(8))
        coords = np.stack([cols.ravel(), rr.ravel()], 1) * 512
        f = rng.standard_normal((len(coords), 8)).astype(np.float32)
        label = "B" if i % 2 else "A"
        if label == "B":
            f[coords[:, 0] < 5 * 512, 0] += 2.0
        PatchFeatures(f, coords, 512, mpp=0.5, patch_px=512, encoder="stain-texture").save(feats / f"s{i:02d}.h5")
        rows.append(f"s{i:02d},{label},p{i // 2}")
        surv.append(f"s{i:02d},{10 - 5 * (i % 2) + i * 0.1:.1f},{1 if i % 3 else 0},p{i // 2}")
    (tmp / "labels.csv").write_text("slide,label,patient\n" + "\n".join(rows) + "\n")
    (tmp / "surv.csv").write_text("slide,time,event,patient\n" + "\n".join(surv) + "\n")
    return tmp, feats, CARE.from_seed(0, **SMALL).eval()


def test_lr_on_mean_pooling_writes_results_heads_and_splits(cohort, tmp_path):
    tmp, feats, _ = cohort
    result = evaluate(tmp / "labels.csv", [feats], protocol="lr", input="mean", out_dir=tmp_path / "out")
    assert result["summary"]["auroc"]["mean"] == 1.0 and result["summary"]["auroc"]["n"] == 5
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert names == sorted(["results.json", "results.md", "test_predictions.csv"]
                           + [f"splits/splits_{k}.csv" for k in range(5)]
                           + [f"heads/labels_lr_mean_fold{k}.{ext}" for k in range(5) for ext in ("json", "safetensors")])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["n_samples"] == 20 and [f["n_test"] for f in saved["folds"]] == [4] * 5
    assert "| lr / mean | 100.0 ± 0.0 | 100.0 ± 0.0 |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "test_predictions.csv").read_text().count("\n") == 21
    # the splits are reused as they are
    again = evaluate(tmp / "labels.csv", [feats], protocol="knn", input="mean", out_dir=tmp_path / "again",
                     splits=tmp_path / "out" / "splits")
    assert [f["n_test"] for f in again["folds"]] == [4] * 5 and not (tmp_path / "again" / "splits").exists()


def test_slide_roi_survival_and_abmil(cohort, tmp_path):
    tmp, feats, model = cohort
    for protocol, input in (("lr", "slide"), ("knn", "roi"), ("abmil", "mean")):
        r = evaluate(tmp / "labels.csv", [feats], model=model, protocol=protocol, input=input, out_dir=tmp_path / protocol,
                     n_folds=3)
        assert np.isfinite(r["summary"]["balanced_accuracy"]["mean"]), (protocol, r["summary"])
    assert not (tmp_path / "abmil" / "heads").exists()  # a baseline: metrics only
    r = evaluate(tmp / "surv.csv", [feats], model=model, protocol="survival", input="slide", out_dir=tmp_path / "surv",
                 n_folds=3)
    assert set(r["summary"]) == {"c_index"} and 0.0 <= r["summary"]["c_index"]["mean"] <= 1.0
    head = load_head(tmp_path / "surv" / "heads" / "surv_survival_slide_fold0")
    assert head.kind == "cox" and head.classes == ("risk",) and head.model_sha256 == r["model_sha256"]


def test_bad_inputs_fail_before_anything_is_written(cohort, tmp_path):
    tmp, feats, model = cohort
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\n" + "\n".join(f"x{i},{'A' if i % 2 else 'B'}" for i in range(12)) + "\ns00,A\n")
    with pytest.raises(InvalidInputError, match=r"no feature file for slide\(s\) x0, x1, .*x9 … \(12 in all\)"):
        evaluate(labels, [feats], model=model, out_dir=tmp_path / "out")
    with pytest.raises(InvalidInputError, match="needs a CARE model"):
        evaluate(tmp / "labels.csv", [feats], input="slide", out_dir=tmp_path / "out")
    with pytest.raises(InvalidInputError, match="use --protocol survival"):
        evaluate(tmp / "surv.csv", [feats], model=model, out_dir=tmp_path / "out")
    nan_feats = tmp_path / "nan"
    nan_feats.mkdir()
    for i in range(20):
        (nan_feats / f"s{i:02d}.h5").symlink_to(feats / f"s{i:02d}.h5")
    (nan_feats / "s03.h5").unlink()
    with h5py.File(nan_feats / "s03.h5", "w") as h5:  # a foreign file with NaN features
        h5["features"] = np.full((4, 8), np.nan, np.float32)
        h5["coords"] = np.arange(8).reshape(4, 2) * 512
        h5["coords"].attrs["patch_size_level0"] = 512
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    with pytest.raises(CareError, match=r"s03.h5.*NaN"):
        evaluate(tmp / "labels.csv", [nan_feats], model=model, out_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # checked writable, then nothing written
    with pytest.raises(InvalidInputError, match="uses protocol 'lr' or 'knn', not 'survival'"):
        evaluate(tmp / "labels.csv", [feats], model=model, protocol="survival", out_dir=tmp_path / "o2",
                 annotations={"s00": []})
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        evaluate(tmp / "labels.csv", [feats], model=model, out_dir=tmp_path / "file")


def test_region_head_from_polygons_then_predict(cohort, tmp_path):
    tmp, feats, model = cohort
    # left half of every slide "tumour", right half "stroma" (level-0 px)
    polys = {f"s{i:02d}": [(box(0, 0, 5 * 512, 8 * 512), "tumour"), (box(5 * 512, 0, 10 * 512, 8 * 512), "stroma")]
             for i in range(20)}
    r = evaluate(tmp / "labels.csv", [feats], model=model, protocol="lr", out_dir=tmp_path / "region", annotations=polys,
                 n_folds=3)
    assert r["input"] == "region" and r["classes"] == ["stroma", "tumour"] and r["n_samples"] > 40
    head_path = tmp_path / "region" / "heads" / "labels_region_region_fold0"
    head = load_head(head_path)
    assert head.input == "region"
    written = predict_paths([feats / "s01.h5"], model, [head_path], tmp_path / "pred")
    enc = SlideEncoding.load_npz(tmp_path / "pred" / "s01_encoding.npz")
    (pred,) = enc.predictions
    assert pred.head == "labels_region_region_fold0" and pred.region_proba.shape == (enc.n_regions, 2)
    np.testing.assert_allclose(pred.region_proba.sum(1), 1.0, rtol=1e-5)
    assert written[-1].name == "slide_predictions.csv"
    assert "labels_region_region_fold0 p(tumour)" in (tmp_path / "pred" / "s01_regions.csv").read_text().splitlines()[0]


def test_cli_evaluate_then_predict_and_a_head_from_another_model(cohort, tmp_path, capsys):
    tmp, feats, model = cohort
    ckpt = save_checkpoint(model, tmp_path / "care", encoder="stain-texture")
    other = save_checkpoint(CARE.from_seed(1, **SMALL), tmp_path / "other", encoder="stain-texture")
    assert main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                 "--input", "roi", "--folds", "3", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "| lr / roi |" in out and "results.json" in out
    head = tmp_path / "ev" / "heads" / "labels_lr_roi_fold2"
    assert main(["predict", str(feats / "s00.h5"), str(feats / "s01.h5"), "--model", str(ckpt), "--head", str(head),
                 "--out", str(tmp_path / "pr")]) == 0
    lines = (tmp_path / "pr" / "slide_predictions.csv").read_text().splitlines()
    assert lines[0] == "slide,labels_lr_roi_fold2 class,labels_lr_roi_fold2 p(A),labels_lr_roi_fold2 p(B)"
    assert [line.split(",")[0] for line in lines[1:]] == ["s00", "s01"]
    assert main(["predict", str(feats / "s00.h5"), "--model", str(other), "--head", str(head),
                 "--out", str(tmp_path / "x")]) == 2
    assert "was trained on CARE model" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(HeadError):
        predict_paths([feats / "s00.h5"], CARE.from_seed(2, **SMALL), [head], tmp_path / "y")


def test_cli_region_classifier_from_qupath_geojson(cohort, tmp_path, capsys):
    tmp, feats, model = cohort
    ckpt = save_checkpoint(model, tmp_path / "care", encoder="stain-texture")
    ann = tmp_path / "annotations"
    ann.mkdir()

    def feature(x0, x1, name):
        ring = [[x0, 0], [x1, 0], [x1, 8 * 512], [x0, 8 * 512], [x0, 0]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": name, "color": [200, 0, 0]}}}

    for i in range(0, 20, 2):  # half of the slides annotated: left half tumour, right half stroma
        (ann / f"s{i:02d}.geojson").write_text(json.dumps(
            {"type": "FeatureCollection", "features": [feature(0, 5 * 512, "Tumor"), feature(5 * 512, 10 * 512, "Stroma")]}))
    assert main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                 "--annotations", str(ann), "--folds", "3", "--out", str(tmp_path / "reg")]) == 0
    saved = json.loads((tmp_path / "reg" / "results.json").read_text())
    assert saved["input"] == "region" and saved["classes"] == ["Stroma", "Tumor"]
    assert saved["n_samples"] >= 20 and len(saved["folds"]) == 3
    assert "| lr / region |" in capsys.readouterr().out
